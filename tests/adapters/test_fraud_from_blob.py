"""The fraud task's real loader reads the public CSV layout from Azure Blob (Azurite)."""

import numpy as np

from adapters.blob import BlobStore
from tasks import get_task
from tasks.base import DataSection
from tasks.fraud import frame_to_dataset, generate_fraud_frame


def test_fraud_task_loads_its_csv_from_a_blob_url(
    azurite_env, blob_container, monkeypatch, tmp_path
):
    frame = generate_fraud_frame(n_rows=2000, seed=11)
    url = azurite_env.url(blob_container, "silo-a/creditcard.csv")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with BlobStore.from_uri(url) as store:
        store.write_bytes("silo-a/creditcard.csv", frame.to_csv(index=False).encode())
    pool, _ = get_task("fraud").load_data(DataSection(source=url))
    expected = frame_to_dataset(frame)
    np.testing.assert_allclose(pool.x, expected.x, rtol=1e-6)
    assert np.array_equal(pool.y, expected.y)
