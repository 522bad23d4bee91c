using PixArtSharp.Schedulers;
using static TorchSharp.torch;

namespace PixArtSharp.Pipeline;

/// <summary>
/// The clean latents a step predicts (x̂₀), as the live previews show them. One formula for every scheduler, from the
/// ε the transformer predicted and the sample it saw: x̂₀ = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t — DDPM's
/// <c>pred_original_sample</c>, DPM-Solver++'s and SA-Solver's data prediction, and LCM's <c>denoised</c> up to its
/// boundary scalings (c_skip ≈ 0, c_out ≈ 1 at PixArt-LCM's timesteps). It only reads the step's tensors, so the
/// denoising itself (and the final image) is untouched.
/// </summary>
internal static class PredictedClean
{
    /// <summary>
    /// x̂₀ (fp32, the shape of <paramref name="sample"/>) for timestep <paramref name="timestep"/>, or null when the
    /// scheduler has no ᾱ table (<see cref="IScheduler.AlphaProd"/>). The result belongs to the caller's dispose scope.
    /// </summary>
    public static Tensor? Estimate(IScheduler scheduler, long timestep, Tensor sample, Tensor epsilon)
    {
        ArgumentNullException.ThrowIfNull(scheduler);
        ArgumentNullException.ThrowIfNull(sample);
        ArgumentNullException.ThrowIfNull(epsilon);
        if (scheduler.AlphaProd(timestep) is not { } alphaProd || !(alphaProd > 0)) return null;
        using var scope = NewDisposeScope();
        var x0 = sample.to(ScalarType.Float32).sub(epsilon.to(ScalarType.Float32).mul(Math.Sqrt(1 - alphaProd))).div_(Math.Sqrt(alphaProd));
        return x0.MoveToOuterDisposeScope();
    }
}
