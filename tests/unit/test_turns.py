"""Turns on shared CPU cores: decoders wait while the model runs, unless stages may overlap."""

from __future__ import annotations

import threading

import pytest

from worker.turns import Turns


def start_decoding(turns: Turns, entered: threading.Event) -> threading.Thread:
    def decoder() -> None:
        with turns.decoding():
            entered.set()

    thread = threading.Thread(target=decoder)
    thread.start()
    return thread


def test_on_cpu_decoders_wait_while_the_model_runs():
    turns = Turns(enabled=True)
    entered = threading.Event()
    with turns.model():
        thread = start_decoding(turns, entered)
        assert not entered.wait(0.3)  # no decode on the model's cores during a forward pass
    assert entered.wait(5)
    thread.join()


def test_on_a_gpu_the_stages_overlap():
    turns = Turns(enabled=False)
    entered = threading.Event()
    with turns.model():
        thread = start_decoding(turns, entered)
        assert entered.wait(5)
    thread.join()


def test_the_model_waits_for_running_decodes():
    turns = Turns(enabled=True)
    decoding, release, modelled = threading.Event(), threading.Event(), threading.Event()

    def decoder() -> None:
        with turns.decoding():
            decoding.set()
            release.wait(5)

    def model() -> None:
        with turns.model():
            modelled.set()

    threads = [threading.Thread(target=decoder), threading.Thread(target=model)]
    threads[0].start()
    assert decoding.wait(5)
    threads[1].start()
    assert not modelled.wait(0.3)
    release.set()
    assert modelled.wait(5)
    for thread in threads:
        thread.join()


def test_an_error_in_the_models_turn_does_not_block_decoders():
    turns = Turns(enabled=True)
    with pytest.raises(RuntimeError), turns.model():
        raise RuntimeError("time limit")
    entered = threading.Event()
    start_decoding(turns, entered).join(5)
    assert entered.is_set()
