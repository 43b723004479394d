"""scikit-learn's handwritten digits as a TFDS dataset: the embedded default, no network.

The 1,797 8x8 grey images (values 0-16) ship inside scikit-learn. They are stored as PNGs
(scaled to 0-255) so that they go through the same decode and preprocessing code as
ImageNet. The test split is a fixed stratified 20 % (360 images).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

TEST_SIZE = 360


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """``tfds.builder("sklearn_digits")``: splits ``train`` (1,437) and ``test`` (360)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "scikit-learn's load_digits, stratified 80/20 split (seed 0)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # nothing to download
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        images, labels = load_digits(return_X_y=True)
        images = np.round(images.reshape(-1, 8, 8, 1) * (255 / 16)).astype(np.uint8)
        index = np.arange(len(labels))
        train, test = train_test_split(index, test_size=TEST_SIZE, stratify=labels,
                                       random_state=0)
        return {"train": self._generate_examples(images, labels, np.sort(train)),
                "test": self._generate_examples(images, labels, np.sort(test))}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, index: np.ndarray):
        for i in index:
            yield int(i), {"image": images[i], "label": int(labels[i])}


