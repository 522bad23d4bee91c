using PixArtSharp.Loading;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Models;

// The few primitive layers every model shares. Each holds its tensors in fields named as the checkpoint keys
// (weight, bias) and is built from the Weights at its own key path, so a checkpoint binds by name.

internal sealed class Linear : IDisposable
{
    public readonly Tensor weight;
    public readonly Tensor? bias;

    public Linear(Weights w, long inFeatures, long outFeatures, bool bias = true)
    {
        weight = w.Get("weight", outFeatures, inFeatures);
        this.bias = bias ? w.Get("bias", outFeatures) : null;
    }

    /// <summary>
    /// A 2-D input (one vector per sample: timestep, size and aspect-ratio embeddings) runs row by row: BLAS uses a
    /// different kernel for one row than for several (measured: 6e-8 apart), so a batch would change each sample's
    /// last bits. Row by row, a batch of independent requests (the server) gives each exactly its result alone.
    /// Sequence inputs (B, N, C) are batch-invariant as they are (measured: bit-identical for B = 1 and 2).
    /// </summary>
    public Tensor forward(Tensor x)
    {
        if (x.dim() != 2 || x.shape[0] <= 1) return F.linear(x, weight, bias);
        using var scope = NewDisposeScope();
        var rows = new Tensor[x.shape[0]];
        for (int i = 0; i < rows.Length; i++) rows[i] = F.linear(x[i..(i + 1)], weight, bias);
        return cat(rows, 0).MoveToOuterDisposeScope();
    }

    public void Dispose() { weight.Dispose(); bias?.Dispose(); }
}

internal sealed class Conv2d : IDisposable
{
    public readonly Tensor weight;
    public readonly Tensor? bias;
    private readonly long _stride, _padding;

    public Conv2d(Weights w, long inChannels, long outChannels, long kernel, long stride = 1, long padding = 0, bool bias = true)
    {
        weight = w.Get("weight", outChannels, inChannels, kernel, kernel);
        this.bias = bias ? w.Get("bias", outChannels) : null;
        _stride = stride;
        _padding = padding;
    }

    public Tensor forward(Tensor x) =>
        F.conv2d(x, weight, bias, strides: [_stride, _stride], padding: [_padding, _padding]);

    public void Dispose() { weight.Dispose(); bias?.Dispose(); }
}

internal sealed class GroupNorm : IDisposable
{
    public readonly Tensor weight;
    public readonly Tensor bias;
    private readonly long _groups;
    private readonly double _eps;

    public GroupNorm(Weights w, long groups, long channels, double eps)
    {
        weight = w.Get("weight", channels);
        bias = w.Get("bias", channels);
        _groups = groups;
        _eps = eps;
    }

    public Tensor forward(Tensor x) => F.group_norm(x, _groups, weight, bias, _eps);

    public void Dispose() { weight.Dispose(); bias.Dispose(); }
}

/// <summary>LayerNorm over the last dimension; without affine parameters when the checkpoint has none.</summary>
internal sealed class LayerNorm : IDisposable
{
    public readonly Tensor? weight;
    public readonly Tensor? bias;
    private readonly long _dim;
    private readonly double _eps;

    public LayerNorm(Weights? w, long dim, double eps, bool elementwiseAffine)
    {
        if (elementwiseAffine)
        {
            weight = w!.Get("weight", dim);
            bias = w.Get("bias", dim);
        }
        _dim = dim;
        _eps = eps;
    }

    public Tensor forward(Tensor x) => F.layer_norm(x, [_dim], weight, bias, _eps);

    public void Dispose() { weight?.Dispose(); bias?.Dispose(); }
}
