"""Generated files are never edited by hand: each committed one equals what its command writes
from the committed results (run `python -m experiments.headline` after a new run)."""

from pathlib import Path

from experiments.headline import write_all

ROOT = Path(__file__).resolve().parents[1]


def test_headline_and_results_doc_are_what_the_command_writes(tmp_path):
    wrote = write_all(ROOT / "results" / "runs", tmp_path / "headline.md", tmp_path / "results.md")
    for new, committed in zip(wrote, [ROOT / "results" / "headline.md",
                                      ROOT / "docs" / "results.md"]):
        assert new.read_text() == committed.read_text(), (
            f"{committed.relative_to(ROOT)} differs from what `python -m experiments.headline` "
            "writes from results/: run it and commit the files")
