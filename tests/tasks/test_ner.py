"""NER task: entity-level F1, CoNLL parsing, encoding, the generated corpus, partitions,
and a federation that learns."""

import zlib

import numpy as np
import pytest
import torch

from fl_app.config import ConfigError, RunConfig
from tasks import get_task
from tasks.base import DataSection
from tasks.entity_metrics import entity_scores, entity_spans
from tasks.ner import (
    PAD_LABEL,
    TAGS,
    BiLSTMTagger,
    encode_sentences,
    generate_ner_corpus,
    normalize_tags,
    parse_conll,
    word_id,
    word_shape,
    write_conll,
)


# --------------------------------------------------------------------------- entity F1
@pytest.mark.parametrize(
    ("tags", "spans"),
    [
        (["O", "O"], []),
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
        (["O", "I-ORG", "I-ORG"], [("ORG", 1, 2)]),  # I- after O opens a chunk (lenient)
        (["B-PER", "I-ORG"], [("PER", 0, 0), ("ORG", 1, 1)]),  # a type change closes it
        (["B-MISC", "I-MISC", "I-MISC"], [("MISC", 0, 2)]),
    ],
)
def test_entity_spans(tags, spans):
    assert entity_spans(tags) == spans


def test_entity_scores_hand_made():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"], ["O", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"], ["B-MISC", "O"]]
    scores = entity_scores(gold, pred)
    # gold: PER(0-1), LOC, ORG = 3; predicted: PER(0-0), LOC, ORG, MISC = 4; correct 2.
    assert scores["correct-entities"] == 2
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert entity_scores([["O"]], [["O"]])["f1"] == 0.0
    assert entity_scores(gold, gold)["f1"] == 1.0
    with pytest.raises(ValueError, match="not BIO"):
        entity_scores([["X-PER"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        entity_scores([["O", "O"]], [["O"]])


def test_entity_scores_agree_with_seqeval_on_random_sequences():
    from seqeval.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    gold = [[TAGS[t] for t in rng.integers(0, len(TAGS), rng.integers(1, 12))] for _ in range(300)]
    pred = [
        [t if rng.random() < 0.7 else TAGS[rng.integers(len(TAGS))] for t in sentence]
        for sentence in gold
    ]
    ours = entity_scores(gold, pred)
    assert ours["precision"] == pytest.approx(precision_score(gold, pred))
    assert ours["recall"] == pytest.approx(recall_score(gold, pred))
    assert ours["f1"] == pytest.approx(f1_score(gold, pred))


# --------------------------------------------------------------------------- CoNLL
CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O
. . O O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
"""


def test_parse_conll_reads_columns_sentences_and_iob1():
    sentences = parse_conll(CONLL.splitlines())
    assert sentences == [
        (["EU", "rejects", "German", "call", "."], ["B-ORG", "O", "B-MISC", "O", "O"]),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    ]
    assert normalize_tags(["B-PERSON", "I-PERSON", "S-GPE", "B-DIS", "E-DIS", "O"]) == [
        "B-PER", "I-PER", "B-LOC", "B-MISC", "I-MISC", "O",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="line 2: 'lonely' has one column"):
        parse_conll(["EU B-ORG", "lonely"])
    with pytest.raises(ValueError, match="not a BIO/IOBES tag"):
        normalize_tags(["PER"])


def test_conll_directory_round_trips_through_the_task(tmp_path):
    corpus = generate_ner_corpus(60, seed=5)
    write_conll(tmp_path / "train.txt", corpus[:40])
    write_conll(tmp_path / "valid.txt", corpus[40:50])
    write_conll(tmp_path / "test.txt", corpus[50:])
    task = get_task("ner")
    pool, test = task.load_data(DataSection(source=str(tmp_path)))
    expected = encode_sentences(corpus)
    assert len(pool) == 50 and len(test) == 10
    assert pool.x.shape[1] == test.x.shape[1] == expected.x.shape[1]
    np.testing.assert_array_equal(pool.x, expected.x[:50])
    np.testing.assert_array_equal(test.y, expected.y[50:])
    # A single file: the pool only (the server holds out test-fraction of it).
    single, none = task.load_data(DataSection(source=str(tmp_path / "train.txt")))
    assert none is None and len(single) == 40
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no train\.txt"):
        task.load_data(DataSection(source=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        task.load_data(DataSection(source=str(tmp_path / "missing-dir")))


def test_hugging_face_directory_with_class_label_names(tmp_path):
    import datasets

    names = ["O", "B-PERSON", "I-PERSON", "B-ORG", "I-ORG", "B-GPE", "I-GPE", "B-EVE"]
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
            "lang": datasets.Value("string"),
        }
    )
    rows = {
        "tokens": [["Anna", "Smith", "left"], ["Oslo", "won"], ["Hallo", "Welt"]],
        "ner_tags": [[1, 2, 0], [5, 0], [0, 0]],
        "lang": ["en", "en", "de"],
    }
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(tmp_path / "hf")
    pool, test = get_task("ner").load_data(DataSection(source=str(tmp_path / "hf")))
    assert len(pool) == 2 and len(test) == 1  # the German row is dropped
    assert [TAGS[t] for t in pool.y[0] if t != PAD_LABEL] == ["B-PER", "I-PER", "O"]
    assert [TAGS[t] for t in test.y[0] if t != PAD_LABEL] == ["B-LOC", "O"]


# --------------------------------------------------------------------------- encoding
def test_hashing_vocabulary_is_fixed_and_case_insensitive():
    assert word_id("Lisbon") == word_id("lisbon") == 1 + zlib.crc32(b"lisbon") % 8191
    assert 1 <= word_id("anything") < 8192
    assert [word_shape(w) for w in ["oslo", "Oslo", "NATO", "1996", ",", "U.S."]] == [
        1, 2, 3, 4, 5, 6,
    ]  # fmt: skip
    data = encode_sentences([(["Anna", "ran"], ["B-PER", "O"]), (["Go"], ["O"])])
    assert data.x.shape == (2, 2, 2) and data.y.tolist() == [[1, 0], [0, PAD_LABEL]]
    assert data.x[1, 1].tolist() == [0, 0]
    with pytest.raises(ValueError, match="tag 'B-XYZ' is not one of"):
        encode_sentences([(["a"], ["B-XYZ"])])


def test_generated_corpus_is_deterministic_distinct_and_covers_every_type():
    corpus = generate_ner_corpus(500, seed=2)
    assert corpus == generate_ner_corpus(500, seed=2)
    assert corpus != generate_ner_corpus(500, seed=3)
    assert len({tuple(tokens) for tokens, _ in corpus}) == 500
    kinds = {kind for _, tags in corpus for kind, *_ in entity_spans(tags)}
    assert kinds == {"PER", "ORG", "LOC", "MISC"}
    multi = [s for _, tags in corpus for s in entity_spans(tags) if s[2] > s[1]]
    assert multi  # multi-token entities exist


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partitions_are_deterministic_and_strata_drive_the_skew(partitioner):
    task = get_task("ner")
    cfg = RunConfig(task="ner", data={"partitioner": partitioner, "dirichlet-alpha": 0.3})
    parts = [task.load_partition(i, 4, cfg.data, cfg.seed) for i in range(4)]
    again = [task.load_partition(i, 4, cfg.data, cfg.seed) for i in range(4)]
    for a, b in zip(parts, again, strict=True):
        np.testing.assert_array_equal(a.train.x, b.train.x)
        np.testing.assert_array_equal(a.val.y, b.val.y)
    pool, _ = task.split(cfg.data, cfg.seed)
    assert sum(len(p.train) + len(p.val) for p in parts) == len(pool) == 2400
    strata = task.strata(pool)
    assert set(np.unique(strata)) == {0, 1, 2, 3, 4}
    shares = np.array([np.bincount(task.strata(p.train), minlength=5) / len(p.train)
                       for p in parts])  # fmt: skip
    spread = shares.max(axis=0) - shares.min(axis=0)
    if partitioner == "dirichlet":
        assert spread.max() > 0.3
    else:
        assert spread.max() < 0.15


def test_model_takes_padding_and_padding_does_not_change_predictions():
    torch.manual_seed(0)
    model = BiLSTMTagger().eval()
    data = encode_sentences([(["Anna", "Smith", "visited", "Oslo", "."],
                              ["B-PER", "I-PER", "O", "B-LOC", "O"])])  # fmt: skip
    padded = np.pad(data.x, ((0, 0), (0, 7), (0, 0)))
    with torch.no_grad():
        short = model(torch.from_numpy(data.x))
        long = model(torch.from_numpy(padded))
    assert short.shape == (1, len(TAGS), 5) and long.shape == (1, len(TAGS), 12)
    torch.testing.assert_close(long[..., :5], short)


def test_local_dp_is_refused_at_config_time_naming_the_alternative():
    with pytest.raises(ConfigError, match=r"'dp.local' = true is not available for task 'ner'"
                       r".*nn\.LSTM.*Use 'dp.central' = true"):  # fmt: skip
        RunConfig.from_flower({"task": "ner", "dp.local": True})
    assert RunConfig.from_flower(
        {"task": "ner", "dp.central": True, "robust.max-update-norm-ratio": 0.0}
    )


def test_opacus_itself_refuses_the_lstm_with_a_clear_error():
    from strategies.privacy.local import make_private_trainer

    task = get_task("ner")
    data = task.load_partition(0, 10, DataSection(), seed=42).train
    model = task.build_model()
    with pytest.raises(ValueError, match=r"not compatible with Opacus DP-SGD.*nn\.LSTM"):
        make_private_trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), data, batch_size=16,
            max_grad_norm=1.0, delta=1e-5, noise_multiplier=1.0,
        )  # fmt: skip


def test_federation_learns_ner(tmp_path):
    """The real ServerApp body and ClientApp on the in-process grid: 2 rounds, 10 silos
    (3 sampled per round), two local epochs at a high learning rate (few steps); entity
    F1 rises far above the untrained model's."""
    from fl_app.client_app import app as client_app
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid

    cfg = RunConfig(
        task="ner",
        num_server_rounds=2,
        training={"local-epochs": 2, "learning-rate": 0.3},
        sampling={"fraction-train": 0.3, "fraction-evaluate": 0.0},
        output={"run-dir": str(tmp_path / "runs")},
    )
    task = get_task("ner")
    torch.manual_seed(0)
    untrained = task.evaluate(task.build_model(), task.load_test(cfg.data, cfg.seed))
    result, _ = run_federation(InProcessGrid(client_app, cfg.to_flower(), 10), cfg)
    final = result.evaluate_metrics_serverapp[2]
    assert set(final) >= {"loss", "accuracy", "entity-precision", "entity-recall", "entity-f1"}
    assert final["entity-f1"] > untrained["entity-f1"] + 0.2
    assert final["loss"] < untrained["loss"]
