"""Run machinery: inputs, image files, atomic writes, the manifest, sharding, the face runner and the commands' library functions."""
