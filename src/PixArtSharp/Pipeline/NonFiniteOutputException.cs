namespace PixArtSharp.Pipeline;

/// <summary>
/// The pipeline produced NaN or infinite values (broken weights, an absurd scheduler config, an overflowing fp16
/// run): failing here, naming the stage, replaces an all-black image that looks like success.
/// </summary>
/// <param name="stage">Where the values were found: "denoise" (the final latents) or "decode" (the decoded image).</param>
public sealed class NonFiniteOutputException(string stage, string message) : Exception(message)
{
    /// <summary>"denoise" or "decode".</summary>
    public string Stage { get; } = stage;

    /// <summary>Throws when <paramref name="values"/> holds a NaN or an infinity.</summary>
    public static void ThrowIfNonFinite(TorchSharp.torch.Tensor values, string stage, string what)
    {
        // One reduction (isfinite → all) and one scalar read: cheap next to a denoising step.
        using var finite = TorchSharp.torch.isfinite(values);
        using var all = finite.all();
        if (all.item<bool>()) return;
        throw new NonFiniteOutputException(stage,
            $"The {what} hold NaN or infinite values after the {stage} stage: the weights are broken (NaN/Inf in a " +
            "safetensors file), the scheduler config is out of range, or fp16 overflowed (try --dtype fp32 or bf16). No image was written.");
    }
}
