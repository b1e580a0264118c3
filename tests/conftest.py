"""Shared fixtures. Several test files use these; add new fixtures below, keep the old ones."""

from __future__ import annotations

import copy

import pytest

# --- encoders and tokenizers (all offline) ---------------------------------------------------

ROBERTA_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a man walks into a bar and orders a cold drink",
    "colorless green ideas sleep furiously in the night",
    "she sells sea shells by the sea shore every morning",
    "it was the best of times it was the worst of times",
]


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The embedded MiniLM-L6 (BERT WordPiece) tokenizer."""
    from infoprompt.encoder import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture(scope="session")
def minilm_encoder_pristine():
    """One loaded, frozen MiniLM for the session. Never modify it: use `minilm_encoder`."""
    from infoprompt.encoder import load_encoder

    return load_encoder("minilm")


@pytest.fixture
def minilm_encoder(minilm_encoder_pristine):
    """A private deep copy of the frozen MiniLM (safe to hook, unfreeze or train)."""
    return copy.deepcopy(minilm_encoder_pristine)


@pytest.fixture(scope="session")
def roberta_tokenizer():
    """A tiny byte-level BPE RoBERTa tokenizer, trained locally (no hub)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(ROBERTA_CORPUS * 10, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)
    return RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>",
                                eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


# --- data ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_splits_16(request):
    """The Splits of `demo_store_16` (demo, 16 shots, n_p 4): one store build per session,
    encoded on one thread if this is the first use (see `torch_one_thread`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return request.getfixturevalue("demo_store_16")[1]
    finally:
        torch.set_num_threads(before)


# --- store / training / CLI fixtures ---------------------------------------------------------

@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory):
    """Real GLUE CoLA and SST-2 in GLUE's TSV layout, never copied into the repository:
    $INFOPROMPT_GLUE_DIR, else the Hugging Face hub, else a skip with its reason (a failure
    under INFOPROMPT_REQUIRE_GLUE=1, as in CI). See tests/glue_data.py."""
    from glue_data import glue_folder

    return glue_folder(tmp_path_factory.mktemp("glue-from-hub"))


@pytest.fixture(scope="session")
def demo_store_16(tmp_path_factory):
    """(cfg, splits): demo task, 16 shots, seed 0, CPU, with the test table, in a private store.
    Read-only for tests: copy `cfg.cache_dir` before damaging files."""
    from infoprompt.config import InfoPromptConfig
    from infoprompt.store import load_splits

    cache = tmp_path_factory.mktemp("demo_store_16")
    cfg = InfoPromptConfig(task="demo", shots=16, epochs=1, device="cpu", cache_dir=str(cache))
    return cfg, load_splits(cfg, log=lambda message: None)


# --- CPU threads -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_one_thread():
    """Run a module's small models on one intra-op thread, then restore the setting. On two
    shared cores, two spinning OpenMP threads per process make tiny forward passes up to ~8x
    slower in wall time; one thread is the fast and steady choice for test-sized tensors."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- GPU-only tests --------------------------------------------------------------------------


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU. Without one they are left out of the run (a CPU
    machine, CI included, has nothing to skip), unless `-m cuda` asks for them: then each is
    skipped with that reason. `bash bench/gpu_check.sh` runs them on a GPU."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked or not _no_cuda():
        return
    if "cuda" in (config.getoption("markexpr") or ""):
        skip = pytest.mark.skip(reason="needs a CUDA GPU and torch sees none; "
                                       "`bash bench/gpu_check.sh` runs it on one")
        for item in marked:
            item.add_marker(skip)
        return
    config.hook.pytest_deselected(items=marked)
    items[:] = [item for item in items if not item.get_closest_marker("cuda")]


def pytest_report_header(config):
    if _no_cuda():
        return ("tests marked cuda: left out, torch sees no CUDA GPU "
                "(bash bench/gpu_check.sh runs them on one)")
    return None
