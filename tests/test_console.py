"""What a run shows on the console (scaffold.console): a progress bar of steps."""

import io

import lightning as L
from helpers import Tiny, tiny_batches

from scaffold.console import progress_bar
from scaffold.resume import StepCheckpoint


def test_the_progress_bar_counts_steps_out_of_max_steps_across_a_resume(tmp_path, monkeypatch):
    """Not Lightning's "Epoch 0/-2" (the trainings run by max_steps): "step 5/5", and a run resumed at step 5
    of 8 ends at "8/8", not at the 3 batches this process ran."""
    import rich

    def run(max_steps, ckpt_path=None) -> str:
        console = rich.console.Console(record=True, force_terminal=True, width=120, file=io.StringIO())
        monkeypatch.setattr("lightning.pytorch.callbacks.progress.rich_progress.get_console", lambda: console)
        trainer = L.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            devices=1,
            callbacks=[StepCheckpoint(tmp_path, 1, 1), *progress_bar(True)],
            logger=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(Tiny(), tiny_batches(), ckpt_path=ckpt_path)
        return console.export_text()

    first = run(5)
    assert "step" in first and "5/5" in first and "Epoch" not in first
    resumed = run(8, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert "8/8" in resumed and "3/3" not in resumed and "Epoch" not in resumed
    assert progress_bar(False) == []
