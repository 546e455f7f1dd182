"""improved-diffusion's UNetModel (Nichol & Dhariwal 2021, openai/improved-diffusion unet.py and
nn.py), reduced to what the benchmark needs, with the same module names so that difftrain's
C++ state dict loads with load_state_dict(strict=True). guided-diffusion's two architecture
options (Dhariwal & Nichol 2021, openai/guided-diffusion unet.py) are here too, off by default:
`resblock_updown` (ResBlocks that down- or upsample in place of Downsample / Upsample) and
`use_new_attention_order` (q, k, v split before the heads).

`tuned=True` swaps QKVAttention's two einsums and float32 softmax for
F.scaled_dot_product_attention (the same math, one fused kernel). Everything else is the
reference code path.
"""
import math

import torch as th
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class GroupNorm32(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels):
    return GroupNorm32(32, channels)


def zero_module(module):
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = th.exp(-math.log(max_period) * th.arange(start=0, end=half, dtype=th.float32) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = th.cat([th.cos(args), th.sin(args)], dim=-1)
    if dim % 2:
        embedding = th.cat([embedding, th.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepBlock(nn.Module):
    pass


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels, use_conv):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels, use_conv):
        super().__init__()
        self.op = (nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv
                   else nn.AvgPool2d(2, 2))

    def forward(self, x):
        return self.op(x)


class Checkpointed(nn.Module):
    """improved-diffusion's use_checkpoint: with it, forward keeps no activations for backward and
    recomputes them there (torch.utils.checkpoint, which also replays dropout's randomness)."""
    use_checkpoint = False

    def forward(self, *args):
        if self.use_checkpoint and th.is_grad_enabled():
            return checkpoint(self._forward, *args, use_reentrant=False)
        return self._forward(*args)


class ResBlock(TimestepBlock, Checkpointed):
    def __init__(self, channels, emb_channels, dropout, out_channels, use_scale_shift_norm,
                 updown=None):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        # guided-diffusion's up / down blocks: the same resampling of h (before in_layers' conv)
        # and of the skip path, without parameters.
        self.updown = updown
        if updown == "up":
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif updown == "down":
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def _forward(self, x, emb):
        if self.updown:
            h = self.in_layers[-1](self.h_upd(self.in_layers[:-1](x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while len(emb_out.shape) < len(h.shape):
            emb_out = emb_out[..., None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = th.chunk(emb_out, 2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
            h = out_rest(h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class QKVAttention(nn.Module):
    """improved-diffusion's (guided-diffusion's QKVAttentionLegacy): heads split head-major."""

    def __init__(self, tuned=False):
        super().__init__()
        self.tuned = tuned

    def forward(self, qkv):
        ch = qkv.shape[1] // 3
        q, k, v = th.split(qkv, ch, dim=1)  # [B*H, d, T]
        if self.tuned:
            h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2))
            return h.transpose(1, 2)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = th.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = th.softmax(weight.float(), dim=-1).type(weight.dtype)
        return th.einsum("bts,bcs->bct", weight, v)


class AttentionBlock(Checkpointed):
    def __init__(self, channels, num_heads, tuned=False, new_order=False):
        super().__init__()
        self.num_heads = num_heads
        self.new_order = new_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttention(tuned)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def _forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        if self.new_order:  # guided-diffusion's QKVAttention: q, k, v first, then the heads
            qkv = th.cat([part.reshape(b * self.num_heads, -1, qkv.shape[2])
                          for part in qkv.chunk(3, dim=1)], dim=1)
        else:
            qkv = qkv.reshape(b * self.num_heads, -1, qkv.shape[2])
        h = self.attention(qkv)
        h = h.reshape(b, -1, h.shape[-1])
        h = self.proj_out(h)
        return (x + h).reshape(b, c, *spatial)


def input_side(in_channels, model_channels, num_res_blocks, attention_resolutions, image_size,
               dropout, channel_mult, conv_resample, use_scale_shift_norm, resblock_updown,
               attention):
    """The input blocks and middle block that UNetModel and EncoderUNetModel share, the stem
    with int(channel_mult[0] * model_channels) channels as in guided-diffusion. Returns
    (input_blocks, middle_block, input_block_chans, channels, resolution)."""
    time_embed_dim = model_channels * 4
    stem_channels = int(channel_mult[0] * model_channels)
    input_blocks = nn.ModuleList([TimestepEmbedSequential(
        nn.Conv2d(in_channels, stem_channels, 3, padding=1))])
    input_block_chans = [stem_channels]
    ch = stem_channels
    res = image_size
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers = [ResBlock(ch, time_embed_dim, dropout, int(mult * model_channels),
                               use_scale_shift_norm)]
            ch = int(mult * model_channels)
            if res in attention_resolutions:
                layers.append(attention(ch))
            input_blocks.append(TimestepEmbedSequential(*layers))
            input_block_chans.append(ch)
        if level != len(channel_mult) - 1:
            input_blocks.append(TimestepEmbedSequential(
                ResBlock(ch, time_embed_dim, dropout, ch, use_scale_shift_norm, "down")
                if resblock_updown else Downsample(ch, conv_resample)))
            input_block_chans.append(ch)
            res //= 2
    middle_block = TimestepEmbedSequential(
        ResBlock(ch, time_embed_dim, dropout, ch, use_scale_shift_norm),
        attention(ch),
        ResBlock(ch, time_embed_dim, dropout, ch, use_scale_shift_norm))
    return input_blocks, middle_block, input_block_chans, ch, res


class UNetModel(nn.Module):
    def __init__(self, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, image_size, dropout=0.0, channel_mult=(1, 2, 4, 8),
                 conv_resample=True, num_classes=None, num_heads=4, num_head_channels=-1,
                 use_scale_shift_norm=True, tuned=False, resblock_updown=False,
                 use_new_attention_order=False):
        super().__init__()
        self.model_channels = model_channels
        self.num_classes = num_classes

        def heads(ch):
            return ch // num_head_channels if num_head_channels > 0 else num_heads

        def attention(ch):
            return AttentionBlock(ch, heads(ch), tuned, use_new_attention_order)

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))
        if num_classes:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        self.input_blocks, self.middle_block, input_block_chans, ch, res = input_side(
            in_channels, model_channels, num_res_blocks, attention_resolutions, image_size,
            dropout, channel_mult, conv_resample, use_scale_shift_norm, resblock_updown,
            attention)

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + input_block_chans.pop(), time_embed_dim, dropout,
                                   int(model_channels * mult), use_scale_shift_norm)]
                ch = int(model_channels * mult)
                if res in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(
                        ResBlock(ch, time_embed_dim, dropout, ch, use_scale_shift_norm, "up")
                        if resblock_updown else Upsample(ch, conv_resample))
                    res *= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, x, timesteps, y=None):
        hs = []
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes:
            emb = emb + self.label_emb(y)
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(th.cat([h, hs.pop()], dim=1), emb)
        return self.out(h).type(x.dtype)


class SuperResModel(UNetModel):
    """guided-diffusion's (and improved-diffusion's) upsampler: a UNetModel with twice the input
    channels, the low-resolution image bilinearly upsampled to x's size and concatenated to x."""

    def __init__(self, in_channels, *args, **kwargs):
        super().__init__(in_channels * 2, *args, **kwargs)

    def forward(self, x, timesteps, low_res=None, **kwargs):
        _, _, new_height, new_width = x.shape
        upsampled = F.interpolate(low_res, (new_height, new_width), mode="bilinear")
        x = th.cat([x, upsampled], dim=1)
        return super().forward(x, timesteps, **kwargs)


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling as guided-diffusion's classifier has it: the mean position,
    prepended, attends to every position (q, k, v split before the heads)."""

    def __init__(self, spatial, channels, num_heads, out_channels):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            th.randn(channels, spatial ** 2 + 1) / channels ** 0.5)
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels, 1)
        self.num_heads = num_heads

    def forward(self, x):
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = th.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding
        qkv = self.qkv_proj(x)
        q, k, v = (part.reshape(b, self.num_heads, c // self.num_heads, -1)
                   for part in qkv.chunk(3, dim=1))
        weight = th.softmax(th.einsum("bhct,bhcs->bhts", q, k) / math.sqrt(q.shape[2]), dim=-1)
        h = th.einsum("bhts,bhcs->bhct", weight, v).reshape(b, c, -1)
        return self.c_proj(h)[:, :, 0]


class EncoderUNetModel(nn.Module):
    """guided-diffusion's noisy classifier: the UNet's input side, then a pool to the classes."""

    def __init__(self, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, image_size, channel_mult, num_head_channels,
                 use_scale_shift_norm=True, resblock_updown=False, pool="attention"):
        super().__init__()
        self.model_channels = model_channels
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))

        def attention(ch):
            return AttentionBlock(ch, ch // num_head_channels, new_order=False)

        self.input_blocks, self.middle_block, _, ch, res = input_side(
            in_channels, model_channels, num_res_blocks, attention_resolutions, image_size, 0.0,
            channel_mult, True, use_scale_shift_norm, resblock_updown, attention)
        if pool == "attention":
            self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                     AttentionPool2d(res, ch, ch // num_head_channels,
                                                     out_channels))
        else:
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     zero_module(nn.Conv2d(ch, out_channels, 1)), nn.Flatten())

    def forward(self, x, timesteps):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
        return self.out(self.middle_block(h, emb))


def model_from_difftrain(m, tuned=False):
    """The UNetModel of a difftrain model config: the "model" object of the JSON that difftrain
    writes beside its weight exports (bench_train_step --export, difftrain export). A model
    trained for classifier-free guidance (null_class) has one more label row, the null label; an
    upsampler (low_res_size > 0) is a SuperResModel; use_checkpoint checkpoints its blocks."""
    if m.get("low_res_noise", False):
        raise ValueError("a noise-conditioned upsampler (low_res_noise) has no counterpart in "
                         "improved-diffusion's SuperResModel")
    model = SuperResModel if m.get("low_res_size", 0) > 0 else UNetModel
    net = model(in_channels=m["in_channels"], model_channels=m["model_channels"],
               out_channels=m["out_channels"], num_res_blocks=m["num_res_blocks"],
               attention_resolutions=m["attention_resolutions"],
               image_size=m["image_size"], dropout=m["dropout"],
               channel_mult=m["channel_mult"], conv_resample=m["conv_resample"],
               num_classes=(m["num_classes"] + m.get("null_class", False)) or None,
               num_heads=m["num_heads"], num_head_channels=m["num_head_channels"],
               use_scale_shift_norm=m["use_scale_shift_norm"], tuned=tuned,
               resblock_updown=m.get("resblock_updown", False),
               use_new_attention_order=m.get("use_new_attention_order", False))
    for block in net.modules():
        if isinstance(block, Checkpointed):
            block.use_checkpoint = m.get("use_checkpoint", False)
    return net
