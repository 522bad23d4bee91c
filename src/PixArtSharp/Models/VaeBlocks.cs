using PixArtSharp.Loading;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Models;

// The building blocks of diffusers' AutoencoderKL (v0.29.2) in its Stable Diffusion form: ResnetBlock2D,
// Downsample2D, Upsample2D and the mid-block Attention (resnet.py, attention_processor.py), the blocks that
// group them (unet_2d_blocks.py: DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D) and the Encoder/Decoder
// (autoencoders/vae.py). Every VAE norm uses eps 1e-6, there is no time embedding and output_scale_factor is 1.
//
// Reduced precision: weights may be held in bf16. libtorch's CPU group_norm accumulates its statistics in
// fp32 for bf16 inputs (measured: bf16 group_norm vs fp32 group_norm of the same input differs only by the
// output's bf16 rounding, 0.014 on unit-variance values with a +30 offset, where a bf16 mean/variance gives
// 0.038), so no local upcast is needed. oneDNN's bf16 convolutions and the CPU SDPA kernel also accumulate in
// fp32. Nearest upsampling is exact in any dtype. But libtorch 2.10's CPU bf16 conv2d is wrong (≈30 % relative
// error) for kernels larger than 1×1 whose output channel count is not a multiple of 16 — see VaeConv2d.
//
// Measured at 1024 px (real-size architecture, random bf16 weights, 2 busy cores): Decode peaks at 3.4 GB RSS,
// DecodeTiled with 64-latent tiles at 1.25 GB.
//
// Memory: at 1024 px the last up-block works on 128×1024×1024 maps (512 MB each in fp32), so the forwards
// dispose each intermediate as soon as it is consumed and apply activations and residual adds in place,
// rather than letting the dispose scope hold all of them until the end.

/// <summary>The VAE's activation (<c>act_fn</c>); SD VAEs use silu. Applied in place on a tensor we own.</summary>
internal static class VaeActivation
{
    public static Func<Tensor, Tensor>? Parse(string? name) => name switch
    {
        "silu" or "swish" => x => F.silu(x, inplace: true),
        "mish" => x => F.mish(x, inplace: true),
        "gelu" => x => F.gelu(x, inplace: true),
        "relu" => x => F.relu(x, inplace: true),
        _ => null,
    };

    public static Func<Tensor, Tensor> Get(string name) =>
        Parse(name) ?? throw new ArgumentException($"act_fn '{name}' is not supported (use silu, swish, mish, gelu or relu).", nameof(name));
}

/// <summary>
/// A Conv2d (checkpoint keys weight, bias) that routes around a libtorch 2.10 CPU defect: bf16 conv2d with a
/// kernel larger than 1×1 and an output channel count that is not a multiple of 16 returns wrong values
/// (measured on an AVX-512-BF16 machine: ≈30 % relative error for 1, 3, 4, 8, 12, 15, 17, 20, 24 outputs,
/// correct for 16, 32, 48 and for every 1×1 conv; fp16 is correct; not reproduced on an AMX machine, whose oneDNN
/// kernels differ). The real VAE hits it in decoder.conv_out (128 → 3): such a conv keeps its weights in fp32 and
/// runs in fp32, then casts back. With <c>padOutputs</c> it instead stays in bf16 with its outputs padded by
/// zero filters to the next multiple of 16 (the correct case) and returns the real ones: measured 64 → 3 at
/// 1024² channels-last, 0.046 s CPU against 0.235 s for the fp32 route (which converts the whole input to fp32),
/// with the same error (the output is rounded to bf16 either way). Others run as they are.
/// </summary>
internal sealed class VaeConv2d : IDisposable
{
    /// <summary>The checkpoint's weight, [out, in, k, k] (with padOutputs, a view of the padded one).</summary>
    public readonly Tensor weight;
    /// <summary>Null for a conv built with <c>bias: false</c> (AutoencoderTiny's strided and upsampling convs).</summary>
    public readonly Tensor? bias;
    private readonly Tensor? _paddedWeight, _paddedBias;
    private readonly long _stride, _padding, _outChannels;
    private readonly bool _fp32;

    public VaeConv2d(Weights w, long inChannels, long outChannels, long kernel, long stride = 1, long padding = 0, bool bias = true,
                     bool padOutputs = false)
    {
        bool defective = w.DType == ScalarType.BFloat16 && kernel > 1 && outChannels % 16 != 0;
        _fp32 = defective && !padOutputs;
        _outChannels = outChannels;
        _stride = stride;
        _padding = padding;
        if (defective && padOutputs)
        {
            using var wt = w.Get("weight", outChannels, inChannels, kernel, kernel);
            using var bt = bias ? w.Get("bias", outChannels) : null;
            long extra = (outChannels + 15) / 16 * 16 - outChannels;
            using var zw = zeros([extra, inChannels, kernel, kernel], wt.dtype, wt.device);
            _paddedWeight = cat([wt, zw], 0);
            weight = _paddedWeight.narrow(0, 0, outChannels);
            if (bt is not null)
            {
                using var zb = zeros([extra], bt.dtype, bt.device);
                _paddedBias = cat([bt, zb], 0);
                this.bias = _paddedBias.narrow(0, 0, outChannels);
            }
            return;
        }
        weight = _fp32 ? w.GetFloat32("weight", outChannels, inChannels, kernel, kernel) : w.Get("weight", outChannels, inChannels, kernel, kernel);
        if (bias) this.bias = _fp32 ? w.GetFloat32("bias", outChannels) : w.Get("bias", outChannels);
    }

    /// <summary>True when this conv runs in fp32 to avoid the bf16 defect.</summary>
    public bool RunsInFloat32 => _fp32;

    /// <summary>True when this conv runs in bf16 with its outputs padded to a multiple of 16 to avoid the defect.</summary>
    public bool RunsPadded => _paddedWeight is not null;

    public Tensor forward(Tensor x)
    {
        // A channels-last input (NHWC strides, same shape and values) makes oneDNN on the CPU and cuDNN on CUDA pick
        // their NHWC kernels and convert the weight themselves, as diffusers' vae.to(memory_format=channels_last)
        // does. On an AMX CPU the 1024 px bf16 decode takes 6.4 s instead of 14.6 s (fp32: 27.8 s instead of 29.8 s,
        // and 1 GB less memory), docs/performance.md. Per conv: CUDA's GroupNorm returns NCHW, so the layout does
        // not survive from one conv to the next; where it does, contiguous() below copies nothing.
        if (TorchRuntime.VaeChannelsLast(x.device))
        {
            using var nhwc = x.permute(0, 2, 3, 1).contiguous();   // no copy when x is channels-last already
            using var channelsLast = nhwc.permute(0, 3, 1, 2);
            return Convolve(channelsLast);
        }
        return Convolve(x);
    }

    private Tensor Convolve(Tensor x)
    {
        if (_paddedWeight is not null)
        {
            using var y = F.conv2d(x, _paddedWeight, _paddedBias, strides: [_stride, _stride], padding: [_padding, _padding]);
            return y.narrow(1, 0, _outChannels);
        }
        if (!_fp32) return F.conv2d(x, weight, bias, strides: [_stride, _stride], padding: [_padding, _padding]);
        using var scope = NewDisposeScope();
        var y32 = F.conv2d(x.to(ScalarType.Float32), weight, bias, strides: [_stride, _stride], padding: [_padding, _padding]);
        return y32.to(x.dtype).MoveToOuterDisposeScope();
    }

    public void Dispose() { weight.Dispose(); bias?.Dispose(); _paddedWeight?.Dispose(); _paddedBias?.Dispose(); }
}

/// <summary>diffusers <c>ResnetBlock2D</c> without time embedding: norm1 → act → conv1 → norm2 → act → conv2, + shortcut.</summary>
internal sealed class ResnetBlock2D : IDisposable
{
    public readonly GroupNorm norm1;
    public readonly VaeConv2d conv1;
    public readonly GroupNorm norm2;
    public readonly VaeConv2d conv2;
    /// <summary>1×1 projection of the input, present when in_channels ≠ out_channels.</summary>
    public readonly VaeConv2d? conv_shortcut;
    private readonly Func<Tensor, Tensor> _act;

    public ResnetBlock2D(Weights w, long inChannels, long outChannels, long groups, Func<Tensor, Tensor> act, double eps = 1e-6)
    {
        norm1 = new GroupNorm(w.Sub("norm1"), groups, inChannels, eps);
        conv1 = new VaeConv2d(w.Sub("conv1"), inChannels, outChannels, 3, padding: 1);
        norm2 = new GroupNorm(w.Sub("norm2"), groups, outChannels, eps);
        conv2 = new VaeConv2d(w.Sub("conv2"), outChannels, outChannels, 3, padding: 1);
        if (inChannels != outChannels)
            conv_shortcut = new VaeConv2d(w.Sub("conv_shortcut"), inChannels, outChannels, 1);
        _act = act;
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        // 1. (B,Cin,H,W) → norm1 → act → conv1 → (B,Cout,H,W)
        var h = norm1.forward(x);
        _act(h);
        var h1 = conv1.forward(h);
        h.Dispose();
        // 2. → norm2 → act → (dropout 0) → conv2
        var h2 = norm2.forward(h1);
        h1.Dispose();
        _act(h2);
        var h3 = conv2.forward(h2);
        h2.Dispose();
        // 3. (shortcut + h) / output_scale_factor(1)
        if (conv_shortcut is null)
            h3.add_(x);
        else
        {
            using var sc = conv_shortcut.forward(x);
            h3.add_(sc);
        }
        return h3.MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        norm1.Dispose(); conv1.Dispose(); norm2.Dispose(); conv2.Dispose(); conv_shortcut?.Dispose();
    }
}

/// <summary>diffusers <c>Downsample2D(use_conv=True, padding=0)</c>: pad right/bottom by one, then a 3×3 stride-2 conv.</summary>
internal sealed class Downsample2D : IDisposable
{
    public readonly VaeConv2d conv;

    public Downsample2D(Weights w, long channels)
    {
        conv = new VaeConv2d(w.Sub("conv"), channels, channels, 3, stride: 2, padding: 0);
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        // pad = (0, 1, 0, 1): the asymmetric padding of the original LDM code, so (B,C,H,W) → (B,C,⌊H/2⌋,⌊W/2⌋) for even H, W
        using var padded = F.pad(x, new long[] { 0, 1, 0, 1 }, PaddingModes.Constant, 0.0);
        return conv.forward(padded).MoveToOuterDisposeScope();
    }

    public void Dispose() => conv.Dispose();
}

/// <summary>diffusers <c>Upsample2D(use_conv=True)</c>: nearest ×2, then a 3×3 conv.</summary>
internal sealed class Upsample2D : IDisposable
{
    public readonly VaeConv2d conv;

    public Upsample2D(Weights w, long channels)
    {
        conv = new VaeConv2d(w.Sub("conv"), channels, channels, 3, padding: 1);
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        // (B,C,H,W) → (B,C,2H,2W). diffusers casts bf16 to fp32 around this only because old PyTorch lacked a
        // bf16 nearest kernel; nearest copies values, so running it in bf16 gives the same numbers.
        using var up = F.interpolate(x, scale_factor: [2.0, 2.0], mode: InterpolationMode.Nearest);
        return conv.forward(up).MoveToOuterDisposeScope();
    }

    public void Dispose() => conv.Dispose();
}

/// <summary>
/// The mid-block <c>Attention</c> of the VAE: group norm, then single-head self-attention over the H·W positions
/// (heads = channels / attention_head_dim = 1, head dim = channels), output projection, residual add.
/// </summary>
internal sealed class VaeAttention : IDisposable
{
    public readonly GroupNorm group_norm;
    public readonly Linear to_q;
    public readonly Linear to_k;
    public readonly Linear to_v;
    /// <summary>Checkpoint key <c>to_out.0</c> (to_out.1 is a parameterless dropout).</summary>
    public readonly Linear to_out_0;

    public VaeAttention(Weights w, long channels, long groups, double eps = 1e-6)
    {
        group_norm = new GroupNorm(w.Sub("group_norm"), groups, channels, eps);
        to_q = new Linear(w.Sub("to_q"), channels, channels);
        to_k = new Linear(w.Sub("to_k"), channels, channels);
        to_v = new Linear(w.Sub("to_v"), channels, channels);
        to_out_0 = new Linear(w.Sub("to_out.0"), channels, channels);
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], wd = x.shape[3];
        // 1. Group norm of the (B,C,H,W) map (the same groups as diffusers' norm of (B,C,H·W)), then tokens (B,HW,C)
        var tokens = group_norm.forward(x).flatten(2).transpose(1, 2);
        // 2. q, k, v: (B,1,HW,C), one head whose dim is all channels; SDPA's default scale 1/√C is diffusers' scale
        var q = to_q.forward(tokens).unsqueeze(1);
        var k = to_k.forward(tokens).unsqueeze(1);
        var v = to_v.forward(tokens).unsqueeze(1);
        tokens.Dispose();
        // 3. Attention over all H·W positions. At 1024 px that is 16384 tokens: libtorch's CPU SDPA takes its
        //    flash-attention path (no mask, no dropout), which works in key blocks and never builds the
        //    16384×16384 score matrix (measured: +40 MB peak RSS and 4.4 s for 16384×512, fp32 or bf16).
        var o = Attention.Forward(q, k, v).squeeze(1);                 // (B,HW,C)
        q.Dispose(); k.Dispose(); v.Dispose();
        // 4. to_out.0 → back to (B,C,H,W) → + residual; rescale_output_factor is 1
        var proj = to_out_0.forward(o);
        o.Dispose();
        var y = proj.transpose(1, 2).reshape(b, c, h, wd);
        y.add_(x);
        return y.MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        group_norm.Dispose(); to_q.Dispose(); to_k.Dispose(); to_v.Dispose(); to_out_0.Dispose();
    }
}

/// <summary>diffusers <c>UNetMidBlock2D</c> (no time embedding): resnets.0 → attentions.0 (optional) → resnets.1.</summary>
internal sealed class UNetMidBlock2D : IDisposable
{
    public readonly ResnetBlock2D[] resnets;
    /// <summary>Empty when <c>mid_block_add_attention</c> is false (diffusers then holds [None]).</summary>
    public readonly VaeAttention[] attentions;

    public UNetMidBlock2D(Weights w, long channels, long groups, bool addAttention, Func<Tensor, Tensor> act)
    {
        resnets =
        [
            new ResnetBlock2D(w.Sub("resnets.0"), channels, channels, groups, act),
            new ResnetBlock2D(w.Sub("resnets.1"), channels, channels, groups, act),
        ];
        attentions = addAttention ? [new VaeAttention(w.Sub("attentions.0"), channels, groups)] : [];
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = resnets[0].forward(x);
        if (attentions.Length > 0)
        {
            var a = attentions[0].forward(h);
            h.Dispose();
            h = a;
        }
        var y = resnets[1].forward(h);
        h.Dispose();
        return y.MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        foreach (var r in resnets) r.Dispose();
        foreach (var a in attentions) a.Dispose();
    }
}

/// <summary>diffusers <c>DownEncoderBlock2D</c>: layers_per_block resnets, then a Downsample2D except on the last level.</summary>
internal sealed class DownEncoderBlock2D : IDisposable
{
    public readonly ResnetBlock2D[] resnets;
    /// <summary>One Downsample2D, or none on the last level.</summary>
    public readonly Downsample2D[] downsamplers;

    public DownEncoderBlock2D(Weights w, long inChannels, long outChannels, int numLayers, bool addDownsample, long groups, Func<Tensor, Tensor> act)
    {
        resnets = new ResnetBlock2D[numLayers];
        for (int j = 0; j < numLayers; j++)
            resnets[j] = new ResnetBlock2D(w.Sub($"resnets.{j}"), j == 0 ? inChannels : outChannels, outChannels, groups, act);
        downsamplers = addDownsample ? [new Downsample2D(w.Sub("downsamplers.0"), outChannels)] : [];
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = x;
        foreach (var r in resnets)
        {
            var next = r.forward(h);
            if (!ReferenceEquals(h, x)) h.Dispose();
            h = next;
        }
        foreach (var d in downsamplers)
        {
            var next = d.forward(h);
            if (!ReferenceEquals(h, x)) h.Dispose();
            h = next;
        }
        return (ReferenceEquals(h, x) ? h.alias() : h).MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        foreach (var r in resnets) r.Dispose();
        foreach (var d in downsamplers) d.Dispose();
    }
}

/// <summary>diffusers <c>UpDecoderBlock2D</c>: layers_per_block+1 resnets, then an Upsample2D except on the last level.</summary>
internal sealed class UpDecoderBlock2D : IDisposable
{
    public readonly ResnetBlock2D[] resnets;
    /// <summary>One Upsample2D, or none on the last level.</summary>
    public readonly Upsample2D[] upsamplers;

    public UpDecoderBlock2D(Weights w, long inChannels, long outChannels, int numLayers, bool addUpsample, long groups, Func<Tensor, Tensor> act)
    {
        resnets = new ResnetBlock2D[numLayers];
        for (int j = 0; j < numLayers; j++)
            resnets[j] = new ResnetBlock2D(w.Sub($"resnets.{j}"), j == 0 ? inChannels : outChannels, outChannels, groups, act);
        upsamplers = addUpsample ? [new Upsample2D(w.Sub("upsamplers.0"), outChannels)] : [];
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = x;
        foreach (var r in resnets)
        {
            var next = r.forward(h);
            if (!ReferenceEquals(h, x)) h.Dispose();
            h = next;
        }
        foreach (var u in upsamplers)
        {
            var next = u.forward(h);
            if (!ReferenceEquals(h, x)) h.Dispose();
            h = next;
        }
        return (ReferenceEquals(h, x) ? h.alias() : h).MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        foreach (var r in resnets) r.Dispose();
        foreach (var u in upsamplers) u.Dispose();
    }
}

/// <summary>diffusers <c>Encoder</c> (vae.py) with double_z: image (B,in,H,W) → moments (B,2·latent,H/f,W/f).</summary>
internal sealed class VaeEncoder : IDisposable
{
    public readonly VaeConv2d conv_in;
    public readonly DownEncoderBlock2D[] down_blocks;
    public readonly UNetMidBlock2D mid_block;
    public readonly GroupNorm conv_norm_out;
    public readonly VaeConv2d conv_out;
    private readonly Func<Tensor, Tensor> _act;

    public VaeEncoder(Weights w, AutoencoderKLConfig c)
    {
        var ch = c.BlockOutChannels;
        long groups = c.NormNumGroups;
        _act = VaeActivation.Get(c.ActFn);
        conv_in = new VaeConv2d(w.Sub("conv_in"), c.InChannels, ch[0], 3, padding: 1);
        down_blocks = new DownEncoderBlock2D[ch.Length];
        int outCh = ch[0];
        for (int i = 0; i < ch.Length; i++)
        {
            int inCh = outCh;
            outCh = ch[i];
            bool isFinal = i == ch.Length - 1;
            down_blocks[i] = new DownEncoderBlock2D(w.Sub($"down_blocks.{i}"), inCh, outCh, c.LayersPerBlock, !isFinal, groups, _act);
        }
        mid_block = new UNetMidBlock2D(w.Sub("mid_block"), ch[^1], groups, c.MidBlockAddAttention, _act);
        conv_norm_out = new GroupNorm(w.Sub("conv_norm_out"), groups, ch[^1], 1e-6);
        conv_out = new VaeConv2d(w.Sub("conv_out"), ch[^1], 2L * c.LatentChannels, 3, padding: 1);
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        // 1. conv_in: (B,in,H,W) → (B,C0,H,W)
        var h = conv_in.forward(x);
        // 2. down blocks: each but the last halves H and W
        foreach (var d in down_blocks)
        {
            var next = d.forward(h);
            h.Dispose();
            h = next;
        }
        // 3. mid block (resnet, attention, resnet)
        var m = mid_block.forward(h);
        h.Dispose();
        // 4. conv_norm_out → act → conv_out: (B,2·latent,H/f,W/f)
        var n = conv_norm_out.forward(m);
        m.Dispose();
        _act(n);
        return conv_out.forward(n).MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        conv_in.Dispose();
        foreach (var d in down_blocks) d.Dispose();
        mid_block.Dispose(); conv_norm_out.Dispose(); conv_out.Dispose();
    }
}

/// <summary>diffusers <c>Decoder</c> (vae.py, norm_type "group"): latents (B,latent,h,w) → image (B,out,h·f,w·f).</summary>
internal sealed class VaeDecoder : IDisposable
{
    public readonly VaeConv2d conv_in;
    public readonly UNetMidBlock2D mid_block;
    public readonly UpDecoderBlock2D[] up_blocks;
    public readonly GroupNorm conv_norm_out;
    public readonly VaeConv2d conv_out;
    private readonly Func<Tensor, Tensor> _act;

    public VaeDecoder(Weights w, AutoencoderKLConfig c)
    {
        var ch = c.BlockOutChannels;
        long groups = c.NormNumGroups;
        _act = VaeActivation.Get(c.ActFn);
        conv_in = new VaeConv2d(w.Sub("conv_in"), c.LatentChannels, ch[^1], 3, padding: 1);
        mid_block = new UNetMidBlock2D(w.Sub("mid_block"), ch[^1], groups, c.MidBlockAddAttention, _act);
        up_blocks = new UpDecoderBlock2D[ch.Length];
        int outCh = ch[^1];
        for (int i = 0; i < ch.Length; i++)
        {
            int prevCh = outCh;
            outCh = ch[ch.Length - 1 - i];   // reversed(block_out_channels)
            bool isFinal = i == ch.Length - 1;
            up_blocks[i] = new UpDecoderBlock2D(w.Sub($"up_blocks.{i}"), prevCh, outCh, c.LayersPerBlock + 1, !isFinal, groups, _act);
        }
        conv_norm_out = new GroupNorm(w.Sub("conv_norm_out"), groups, ch[0], 1e-6);
        conv_out = new VaeConv2d(w.Sub("conv_out"), ch[0], c.OutChannels, 3, padding: 1);
    }

    /// <param name="trace">Optional; sees <c>decoder.conv_in.output</c>, <c>decoder.mid_block.output</c> and
    /// <c>decoder.up_blocks.{i}.output</c>. The tensors are freed with this call's dispose scope: keep one with
    /// <c>t.clone().DetachFromDisposeScope()</c>.</param>
    public Tensor forward(Tensor z, Action<string, Tensor>? trace = null)
    {
        using var scope = NewDisposeScope();
        // 1. conv_in: (B,latent,h,w) → (B,C_last,h,w)
        var h = conv_in.forward(z);
        trace?.Invoke("decoder.conv_in.output", h);
        // 2. mid block (resnet, attention, resnet)
        var m = mid_block.forward(h);
        h.Dispose();
        trace?.Invoke("decoder.mid_block.output", m);
        // 3. up blocks: each but the last doubles H and W; channels follow reversed(block_out_channels)
        h = m;
        for (int i = 0; i < up_blocks.Length; i++)
        {
            var next = up_blocks[i].forward(h);
            h.Dispose();
            h = next;
            trace?.Invoke($"decoder.up_blocks.{i}.output", h);
        }
        // 4. conv_norm_out → act → conv_out: (B,out,h·f,w·f)
        var n = conv_norm_out.forward(h);
        h.Dispose();
        _act(n);
        return conv_out.forward(n).MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        conv_in.Dispose(); mid_block.Dispose();
        foreach (var u in up_blocks) u.Dispose();
        conv_norm_out.Dispose(); conv_out.Dispose();
    }
}
