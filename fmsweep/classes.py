"""The ten Fashion-MNIST classes, in label order: `fmsweep.CLASSES` of the public API, kept in a leaf (no torch, no
fmsweep import) so that the package and the figures (fmsweep.results.figures) share it without importing each
other."""

# label k (a model's logit k) is CLASSES[k]
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
