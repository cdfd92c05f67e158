"""One index rule for both schedulers' steps, diffusers' own: the first step after ``set_timesteps``
looks its timestep up in ``timesteps`` (an int, a 0-d or a 1-element tensor alike) unless
``set_begin_index`` said where to start, and every step advances by one. Checked against diffusers'
DPMSolverMultistepScheduler, which keeps the same ``step_index`` contract."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from hf_ddpm import HFDDIMScheduler, HFDDPMScheduler


def _timestep_forms(t: int) -> list:
    return [t, torch.tensor(t), torch.tensor([t])]


@pytest.mark.parametrize("cls", [HFDDPMScheduler, HFDDIMScheduler])
@pytest.mark.parametrize("form", range(3))
@pytest.mark.parametrize("start", [0, 3, 8])
def test_the_first_step_looks_its_timestep_up_as_diffusers_does(cls, form, start):
    x = torch.zeros(1, 1, 2, 2)
    for scheduler in (
        cls(num_train_timesteps=100),
        DPMSolverMultistepScheduler(num_train_timesteps=100),
    ):
        scheduler.set_timesteps(10)
        t = int(scheduler.timesteps[start])
        assert scheduler.step_index is None
        scheduler.step(torch.zeros_like(x), _timestep_forms(t)[form], x)
        assert scheduler.step_index == start + 1
        # Later steps advance by one whatever they are passed.
        scheduler.step(torch.zeros_like(x), t, x)
        assert scheduler.step_index == start + 2


@pytest.mark.parametrize("cls", [HFDDPMScheduler, HFDDIMScheduler])
def test_set_begin_index_wins_over_the_timestep_and_the_end_is_an_error(cls):
    s = cls(num_train_timesteps=100)
    s.set_timesteps(5)
    x = torch.zeros(1, 1, 2, 2)
    s.set_begin_index(4)
    s.step(torch.zeros_like(x), int(s.timesteps[0]), x)  # the timestep passed is not looked up
    assert s.step_index == 5
    with pytest.raises(ValueError, match="step called 6 times on a schedule of 5 timesteps"):
        s.step(torch.zeros_like(x), int(s.timesteps[0]), x)
    s.set_timesteps(5)  # starts again
    assert s.step_index is None and s.begin_index is None
