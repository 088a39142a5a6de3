"""The demo's serving part on the tiny fixtures: `twin serve` in the background, a client, a clean stop."""

from __future__ import annotations

import shutil

import pytest

from twin import demo


@pytest.fixture(scope="module")
def repository(tiny_artifact, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "models"
    shutil.copytree(tiny_artifact, root / "cnn-tiny" / "1")
    return root


def test_serve_query_and_shut_down(repository, tiny_sim):
    lines: list[str] = []
    scores = demo.serve_and_query(repository, tiny_sim, say=lines.append)
    text = "\n".join(lines)
    assert [s["data_key"] for s in scores] == ["90001-1-1", "90002-1-1"]
    for s in scores:
        assert s["tier"] == "test" and s["n_neurons"] == 150 and s["n_trials"] > 0
        assert -1 <= s["single_trial_correlation"] <= 1 and s["oracle_correlation"] is not None
    assert "twin serve --repository" in text and "server ready at 127.0.0.1:" in text
    assert "best-predicted neuron" in text and "its most exciting image (50 gradient steps)" in text
    assert text.count("the simulated neuron itself responds") == 2
    assert text.count("of the image is its true receptive field (its Gabor pair)") == 2
    assert text.count("receptive fields of all 150 neurons mapped with sparse noise: centres") == 2
    assert "single-trial" in text and "90002-1-1  test" in text
    assert "stopping the server (SIGTERM)\n  server exited with status 0" in text


def test_the_server_is_stopped_when_a_step_fails(repository, tiny_sim):
    lines: list[str] = []
    with (
        pytest.raises(RuntimeError, match="a failing step"),
        demo.serve(repository, tiny_sim, say=lines.append),
    ):
        raise RuntimeError("a failing step")
    assert lines[-2:] == ["  stopping the server (SIGTERM)", "  server exited with status 0"]


def test_a_server_that_cannot_start_is_reported(tmp_path, tiny_sim):
    with (
        pytest.raises(RuntimeError, match=r"twin serve exited with status [12]"),
        demo.serve(tmp_path / "missing", tiny_sim, log=tmp_path / "serve.log", say=lambda _: None),
    ):
        pass


def test_a_failing_step_makes_the_demo_exit_non_zero(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert demo.main(["--out", str(blocker)]) == 1
    assert "demo failed: `twin simulate" in capsys.readouterr().err
