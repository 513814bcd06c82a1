"""Putting a controlnet_core Contribution into diffusers' UNet2DConditionModel, written from the
protocol's definitions (protocol.py's docstring) and diffusers' own structure, not from the pack's
node layer, so tests can compare against diffusers' native ControlNet and T2I-Adapter paths.

ldm input block k is, in diffusers: k = 0 conv_in; then per down block i its layers j (the
attention when there is one, else the resnet: that module's output is the block's output) and its
downsampler. Where a target goes:
- skip(i)    -> down_block_additional_residuals[i] (diffusers adds it to the stored skip only);
- middle     -> mid_block_additional_residual;
- encoder(k) -> a forward hook on block k's last module adding to its output (stream and skip);
- stream(k)  -> after skip k is stored, stream only: k = 0 is a forward-pre-hook on down block 0
                replacing its input; k = the last block of down block i is a forward hook on that
                down block replacing its returned hidden state but not its stored skips;
- stream_middle -> a forward hook on mid_block.
"""
from __future__ import annotations

from contextlib import ExitStack

import torch

from controlnet_core.protocol import Contribution


def ldm_block_modules(unet) -> list[torch.nn.Module]:
    """The diffusers module whose output is ldm input block k's output, for every k."""
    modules: list[torch.nn.Module] = [unet.conv_in]
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            modules.append(attentions[j] if attentions is not None else resnet)
        if block.downsamplers is not None:
            modules.append(block.downsamplers[0])
    return modules


def down_block_of_last_block(unet) -> dict[int, int]:
    """ldm block index of each down block's last module -> that down block's index."""
    out, index = {}, 0
    for i, block in enumerate(unet.down_blocks):
        index += len(block.resnets) + (1 if block.downsamplers is not None else 0)
        out[index] = i
    return out


def _add_to_output(output, tensor):
    if isinstance(output, tuple):
        return (output[0] + tensor,) + output[1:]
    if hasattr(output, "sample"):
        output.sample = output.sample + tensor
        return output
    return output + tensor


@torch.no_grad()
def unet_with_contribution(unet, contribution: Contribution | None, x, timesteps, context, added_cond_kwargs=None):
    """diffusers UNet output with `contribution` applied as the protocol defines it."""
    blocks = ldm_block_modules(unet)
    down_of_last = down_block_of_last_block(unet)
    kwargs = {}
    with ExitStack() as hooks:
        if contribution is not None:
            if contribution.skips:  # diffusers takes skip residuals together with the middle one
                kwargs["down_block_additional_residuals"] = [contribution.skips[i] for i in range(len(blocks))]
                kwargs["mid_block_additional_residual"] = contribution.middle
            for block, tensor in contribution.encoder.items():
                handle = blocks[block].register_forward_hook(lambda m, i, o, t=tensor: _add_to_output(o, t))
                hooks.callback(handle.remove)
            for point in contribution.stream:
                if point is None:
                    handle = unet.mid_block.register_forward_hook(
                        lambda m, i, o: o + contribution.stream_addition(None, o))
                elif point == 0:
                    def pre_hook(module, args, kwargs_):
                        hidden = kwargs_["hidden_states"] if "hidden_states" in kwargs_ else args[0]
                        hidden = hidden + contribution.stream_addition(0, hidden)
                        if "hidden_states" in kwargs_:
                            return args, {**kwargs_, "hidden_states": hidden}
                        return (hidden,) + args[1:], kwargs_
                    handle = unet.down_blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
                else:
                    def post_hook(module, args, output, point=point):
                        sample, skips = output
                        return sample + contribution.stream_addition(point, sample), skips
                    handle = unet.down_blocks[down_of_last[point]].register_forward_hook(post_hook)
                hooks.callback(handle.remove)
            if contribution.middle is not None and not contribution.skips:
                def mid_hook(module, args, output):
                    return output + contribution.middle
                handle = unet.mid_block.register_forward_hook(mid_hook)
                hooks.callback(handle.remove)
        return unet(x, timesteps, context, added_cond_kwargs=added_cond_kwargs, return_dict=False,
                    **{k: v for k, v in kwargs.items() if v is not None})[0]
