"""Find abnormal cells in microscopy images with an autoencoder and a latent density model."""

__version__ = "0.1.0"
