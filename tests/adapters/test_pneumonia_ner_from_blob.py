"""The pneumonia and NER tasks' real loaders read their files from Azure Blob (Azurite)."""

import numpy as np

from adapters.blob import BlobStore
from tasks import get_task
from tasks.base import DataSection
from tasks.ner import encode_sentences, generate_ner_corpus, write_conll
from tasks.pneumonia import generate_pneumonia_images, images_to_dataset, to_medmnist_npz


def test_pneumonia_npz_and_conll_file_load_from_blob_urls(
    azurite_env, blob_container, monkeypatch, tmp_path
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images, labels = generate_pneumonia_images(n_images=50, seed=9)
    npz = to_medmnist_npz(tmp_path / "pneumoniamnist.npz", images, labels, (0.6, 0.2, 0.2))
    corpus = generate_ner_corpus(30, seed=9)
    conll = write_conll(tmp_path / "silo-a.conll", corpus)
    npz_url = azurite_env.url(blob_container, "silo-a/pneumoniamnist.npz")
    conll_url = azurite_env.url(blob_container, "silo-a/ner.conll")
    with BlobStore.from_uri(npz_url) as store:
        store.write_bytes("silo-a/pneumoniamnist.npz", npz.read_bytes())
        store.write_bytes("silo-a/ner.conll", conll.read_bytes())

    pool, test = get_task("pneumonia").load_data(DataSection(source=npz_url))
    expected = images_to_dataset(images, labels)
    np.testing.assert_array_equal(pool.x, expected.x[:40])
    np.testing.assert_array_equal(test.y, expected.y[40:])

    sentences, none = get_task("ner").load_data(DataSection(source=conll_url))
    assert none is None
    np.testing.assert_array_equal(sentences.y, encode_sentences(corpus).y)
