"""The pinned packages import together and interoperate (pufferlib pins an old numpy)."""
import numpy as np
import torch


def test_torch_shares_memory_with_pinned_numpy():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    tensor = torch.from_numpy(array)
    array[0, 0] = 200  # from_numpy shares the buffer: a broken numpy ABI would copy or crash
    assert tensor[0, 0].item() == 200
    assert torch.as_tensor(array, dtype=torch.float32).sum().item() == array.astype(np.float32).sum()


def test_pufferlib_vector_and_emulation_import():
    import pufferlib.emulation
    import pufferlib.vector

    assert hasattr(pufferlib.vector, "Serial") and hasattr(pufferlib.vector, "Multiprocessing")
    assert hasattr(pufferlib.emulation, "GymnasiumPufferEnv")

