"""Input layer: find the images of a folder (``scan``) and read one file into an RGB image (``imageio``)."""
