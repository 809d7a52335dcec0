"""Videos: decode, track, one identity per track, encode (streaming); the run is :mod:`falco.run.video`."""
