"""examples/seed_study.ipynb: stored without outputs, and executed end to end on the real data
with small epochs (a kernel of this Python, through nbclient)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "seed_study.ipynb"
EPOCHS, FINAL_EPOCHS = 2, 1


def _read():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def _text(cell) -> str:
    """Everything a code cell printed."""
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


def test_the_notebook_is_stored_without_outputs_on_the_public_api():
    import nbformat

    notebook = _read()
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    source = "\n".join(cell.source for cell in code)
    assert "from imdb_jax import ModelConfig, VariantSpec, evaluate, fit, fit_variants, load_imdb, predict" in source
    assert not re.search(r"from imdb_jax\.|import imdb_jax\.", source)  # public names only
    assert notebook.metadata.kernelspec.name == "python3"


@pytest.fixture(scope="module")
def executed(imdb_data, real_data_dir, imdb_cache_dir):
    """The notebook run with 2 epochs (1 for the final model), the data read from the session's
    warm cache (`imdb_data` filled it)."""
    del imdb_data
    import time

    from nbclient import NotebookClient

    notebook = _read()
    with pytest.MonkeyPatch.context() as patch:
        # The kernel is a child process: it inherits these.
        patch.setenv("TFDS_DATA_DIR", str(real_data_dir))
        patch.setenv("IMDB_JAX_CACHE_DIR", str(imdb_cache_dir))
        patch.setenv("IMDB_JAX_NOTEBOOK_EPOCHS", str(EPOCHS))
        patch.setenv("IMDB_JAX_NOTEBOOK_FINAL_EPOCHS", str(FINAL_EPOCHS))
        started = time.perf_counter()
        NotebookClient(
            notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
        ).execute()
        seconds = time.perf_counter() - started
    return notebook, seconds


def test_the_notebook_runs_and_draws_its_figures_inline(executed):
    notebook, seconds = executed
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]
    images = [
        output
        for cell in code
        for output in cell.outputs
        if output.output_type == "display_data" and "image/png" in output.data
    ]
    # The 16-16-1 model's loss and accuracy, then the experiments' validation loss and accuracy.
    assert len(images) == 3, [cell.source[:40] for cell in code if cell.outputs]
    printed = "\n".join(_text(cell) for cell in code)
    assert "25000 training and 25000 test reviews over 10000 words" in printed
    assert re.search(rf"lowest validation loss 0\.\d{{4}} at epoch [1-{EPOCHS}] of {EPOCHS}\n", printed)
    assert re.search(r"16-16 among the nine against 16-16 alone: largest difference in validation loss \d", printed)
    print(f"notebook executed in {seconds:.1f} s")


def test_the_final_model_beats_chance_on_the_test_set(executed):
    notebook, _ = executed
    printed = "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    found = re.search(
        rf"after {FINAL_EPOCHS} epoch on 25000 reviews:\ntest loss (\d\.\d+), test accuracy (\d\.\d+)", printed
    )
    assert found, printed[-2000:]
    # One epoch of the seed's model is far past chance (0.5) already; the seed's 4 epochs give ~0.88.
    assert float(found.group(2)) > 0.8 and float(found.group(1)) < 0.6
    rows = re.findall(r"p\(positive\) (\d\.\d{3})  predicted (positive|negative)\s+label (positive|negative)", printed)
    assert len(rows) == 10
    assert all((float(p) > 0.5) == (guess == "positive") for p, guess, _ in rows)
    assert sum(guess == label for _, guess, label in rows) >= 6
    new = re.findall(r"p\(positive\) (\d\.\d{3})  (A wonderful|Dull)", printed)
    assert [name for _, name in new] == ["A wonderful", "Dull"] and float(new[0][0]) > float(new[1][0])
