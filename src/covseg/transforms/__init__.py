"""Array and tensor transforms: resizing to the network's size and back, normalisation, augmentation."""
