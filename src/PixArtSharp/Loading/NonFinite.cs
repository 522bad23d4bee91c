using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Loading;

/// <summary>
/// Checks a stage's output for NaN and infinite values. Broken weights (NaN/Inf in a large tensor, which is not
/// scanned at load) or settings that overflow give an all-black image and no error; the pipeline calls
/// <see cref="Check"/> on the final latents and on the decoded image so such a run fails, naming the stage,
/// and writes nothing. One reduction and one scalar read per call (a device sync on a GPU).
/// </summary>
internal static class NonFinite
{
    /// <summary>The number of NaN or infinite elements of <paramref name="t"/> (0 for integer and bool tensors).</summary>
    public static long Count(Tensor t)
    {
        ArgumentNullException.ThrowIfNull(t);
        if (!t.is_floating_point() && !t.is_complex()) return 0;
        using var scope = NewDisposeScope();
        return torch.isfinite(t).logical_not().sum().item<long>();
    }

    /// <summary>
    /// Throws a <see cref="NonFiniteOutputException"/> naming <paramref name="stage"/> (e.g. "the final latents",
    /// "the decoded image") when <paramref name="t"/> holds NaN or infinite values; returns it unchanged otherwise.
    /// </summary>
    public static Tensor Check(Tensor t, string stage)
    {
        ArgumentException.ThrowIfNullOrEmpty(stage);
        long bad = Count(t);
        if (bad > 0)
            throw new NonFiniteOutputException(stage,
                $"{stage} hold {bad:N0} NaN or infinite value(s) of {t.numel():N0}: the result would be a black or garbage image, so none was written. " +
                "The model's weights are broken (download the model again), or the settings make the computation overflow (try --dtype fp32 or a lower guidance).");
        return t;
    }
}
