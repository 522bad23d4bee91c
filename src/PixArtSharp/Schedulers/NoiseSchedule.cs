using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Schedulers;

/// <summary>
/// The discrete VP noise schedule shared by the schedulers (diffusers v0.29.2 <c>__init__</c> code and the module
/// functions <c>betas_for_alpha_bar</c> / <c>rescale_zero_terminal_snr</c> / <c>_threshold_sample</c>). Everything
/// is float32 on the CPU, computed with the same torch ops as diffusers so the tables match bit for bit.
/// </summary>
internal static class NoiseSchedule
{
    /// <summary>
    /// A scheduler's betas as its diffusers <c>__init__</c> computes them from the config: beta_schedule, beta_start
    /// and beta_end with that scheduler's defaults (<paramref name="lcm"/>: LCMScheduler's), trained_betas when given,
    /// then rescaled to zero terminal SNR when rescale_betas_zero_snr asks. "sigmoid" only where
    /// <paramref name="allowSigmoid"/> (DDPMScheduler).
    /// </summary>
    public static Tensor Betas(SchedulerConfig config, bool lcm, bool allowSigmoid = false)
    {
        string schedule = config.BetaScheduleFor(lcm);
        var betas = allowSigmoid && schedule == "sigmoid" && config.TrainedBetas is null
            ? SigmoidBetas(config.BetaStartFor(lcm), config.BetaEndFor(lcm), config.NumTrainTimesteps)
            : Betas(schedule, config.BetaStartFor(lcm), config.BetaEndFor(lcm), config.NumTrainTimesteps, config.TrainedBetas);
        if (!config.RescaleBetasZeroSnr) return betas;
        using (betas) return RescaleZeroTerminalSnr(betas);
    }

    /// <summary>
    /// betas (float32, CPU) for <paramref name="betaSchedule"/> "linear", "scaled_linear" or "squaredcos_cap_v2";
    /// <paramref name="trainedBetas"/> overrides the schedule when given.
    /// </summary>
    public static Tensor Betas(string betaSchedule, double betaStart, double betaEnd, int numTrainTimesteps, double[]? trainedBetas)
    {
        if (numTrainTimesteps is < 1 or > SchedulerConfig.MaxTrainTimesteps)
            throw new ArgumentException($"num_train_timesteps must be 1..{SchedulerConfig.MaxTrainTimesteps}, got {numTrainTimesteps}.", nameof(numTrainTimesteps));
        if (trainedBetas != null)
        {
            if (trainedBetas.Length != numTrainTimesteps)
                throw new ArgumentException($"trained_betas has {trainedBetas.Length} entries but num_train_timesteps is {numTrainTimesteps}; they must match.", nameof(trainedBetas));
            return torch.tensor(trainedBetas.Select(b => (float)b).ToArray());
        }
        if (betaSchedule is "linear" or "scaled_linear" && !(betaStart > 0 && betaStart <= betaEnd && betaEnd < 1))
            throw new ArgumentException($"beta_start {betaStart} and beta_end {betaEnd} must satisfy 0 < beta_start ≤ beta_end < 1.", nameof(betaStart));
        switch (betaSchedule)
        {
            case "linear":
                return torch.tensor(TorchLinspaceFloat32(betaStart, betaEnd, numTrainTimesteps));
            case "scaled_linear":
                {
                    // this schedule is very specific to the latent diffusion model: linspace of sqrt(beta) in f32, squared.
                    // Python's float ** 0.5 is C pow(), as is Math.Pow.
                    using var root = torch.tensor(TorchLinspaceFloat32(Math.Pow(betaStart, 0.5), Math.Pow(betaEnd, 0.5), numTrainTimesteps));
                    return root * root;   // `** 2` is x·x in PyTorch's pow kernel
                }
            case "squaredcos_cap_v2":
                return BetasForAlphaBar(numTrainTimesteps);
            default:
                throw new ArgumentException($"beta_schedule '{betaSchedule}' is not implemented (choose linear, scaled_linear or squaredcos_cap_v2).", nameof(betaSchedule));
        }
    }

    /// <summary>
    /// GeoDiff's sigmoid schedule (DDPMScheduler only): sigmoid(linspace(−6, 6, T)) · (β_end − β_start) + β_start, float32.
    /// </summary>
    public static Tensor SigmoidBetas(double betaStart, double betaEnd, int numTrainTimesteps)
    {
        if (numTrainTimesteps < 1)
            throw new ArgumentException($"num_train_timesteps must be positive, got {numTrainTimesteps}.", nameof(numTrainTimesteps));
        using var scope = torch.NewDisposeScope();
        var x = torch.tensor(TorchLinspaceFloat32(-6, 6, numTrainTimesteps));
        return (torch.sigmoid(x) * (betaEnd - betaStart) + betaStart).MoveToOuterDisposeScope();
    }

    /// <summary>Glide cosine schedule: betas from ᾱ(t) = cos²((t+0.008)/1.008·π/2), computed in float64, stored as float32.</summary>
    public static Tensor BetasForAlphaBar(int numDiffusionTimesteps, double maxBeta = 0.999, string alphaTransformType = "cosine")
    {
        Func<double, double> alphaBar = alphaTransformType switch
        {
            "cosine" => t => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2),
            "exp" => t => Math.Exp(t * -12.0),
            _ => throw new ArgumentException($"Unsupported alpha_transform_type: {alphaTransformType}", nameof(alphaTransformType)),
        };
        var betas = new float[numDiffusionTimesteps];
        for (int i = 0; i < numDiffusionTimesteps; i++)
        {
            double t1 = (double)i / numDiffusionTimesteps;
            double t2 = (double)(i + 1) / numDiffusionTimesteps;
            betas[i] = (float)Math.Min(1 - alphaBar(t2) / alphaBar(t1), maxBeta);
        }
        return torch.tensor(betas);
    }

    /// <summary>Rescales betas to zero terminal SNR (arXiv 2305.08891, Algorithm 1), in float32 as diffusers.</summary>
    public static Tensor RescaleZeroTerminalSnr(Tensor betas)
    {
        using var scope = torch.NewDisposeScope();
        var alphasBarSqrt = torch.cumprod(1.0 - betas, 0).sqrt();
        var a0 = alphasBarSqrt[0].clone();
        var aT = alphasBarSqrt[-1].clone();
        // Shift so the last timestep is zero, then scale so the first is back to its old value.
        alphasBarSqrt = alphasBarSqrt - aT;
        alphasBarSqrt = alphasBarSqrt * (a0 / (a0 - aT));
        var alphasBar = alphasBarSqrt * alphasBarSqrt;
        var alphas = alphasBar[1..] / alphasBar[..^1];
        alphas = torch.cat([alphasBar[0..1], alphas]);
        return (1.0 - alphas).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// ᾱ = cumprod(1 − β) as float32. PyTorch's CPU cumprod multiplies in float64 (acc_type) and rounds each
    /// partial product to float32; done here in C# so the table does not depend on the libtorch build.
    /// </summary>
    public static Tensor AlphasCumprod(Tensor betas)
    {
        float[] b = betas.to(ScalarType.Float32).cpu().data<float>().ToArray();
        var acp = new float[b.Length];
        double running = 1.0;
        for (int i = 0; i < b.Length; i++)
        {
            running *= 1f - b[i];   // alphas = 1.0 - betas is a float32 tensor
            acp[i] = (float)running;
        }
        return torch.tensor(acp);
    }

    /// <summary>
    /// <c>torch.linspace(start, end, steps, dtype=torch.float32)</c> exactly as the CPU kernel computes it:
    /// step = (end − start)/(steps − 1) in float32; the first half counts up from start, the second half down from
    /// end; the vectorised loop (2 × 8 floats per iteration with AVX2) builds lanes as base + lane·step from the
    /// vector's first index, and the tail uses the scalar formula. The fixtures (PyTorch 1.13, AVX2) match this bit
    /// for bit; libtorch 2.10's own linspace differs by an ulp in some entries.
    /// </summary>
    public static float[] TorchLinspaceFloat32(double start, double end, int steps)
    {
        var r = new float[steps];
        if (steps == 0) return r;
        float s = (float)start, e = (float)end;
        if (steps == 1) { r[0] = s; return r; }
        float step = (e - s) / (steps - 1);
        long halfway = steps / 2;
        float Scalar(long idx) => idx < halfway ? s + step * idx : e - step * (steps - idx - 1);
        const int vec = 8;
        long i = 0;
        for (; i + 2 * vec <= steps; i += 2 * vec)
        {
            for (int v = 0; v < 2; v++)
            {
                long first = i + v * vec;
                float b = Scalar(first);
                for (int lane = 0; lane < vec; lane++) r[first + lane] = b + lane * step;
            }
        }
        for (; i < steps; i++) r[i] = Scalar(i);
        return r;
    }

    /// <summary>
    /// Dynamic thresholding (Imagen, arXiv 2205.11487), diffusers' <c>_threshold_sample</c>: per sample, s = the
    /// <paramref name="ratio"/> quantile of |x| clamped to [1, <paramref name="sampleMaxValue"/>]; x ← clamp(x, −s, s)/s.
    /// Half-precision inputs are upcast to float32 for the quantile and cast back.
    /// </summary>
    public static Tensor ThresholdSample(Tensor sample, double ratio, double sampleMaxValue)
    {
        using var scope = torch.NewDisposeScope();
        var dtype = sample.dtype;
        long[] shape = sample.shape;
        var x = dtype is ScalarType.Float32 or ScalarType.Float64 ? sample : sample.to(ScalarType.Float32);
        long rest = 1;
        for (int i = 1; i < shape.Length; i++) rest *= shape[i];
        x = x.reshape(shape[0], rest);
        var q = torch.tensor(ratio, dtype: x.dtype, device: x.device);
        var s = torch.quantile(x.abs(), q, dim: 1);
        s = s.clamp(1, sampleMaxValue).unsqueeze(1);
        x = torch.clamp(x, -s, s) / s;
        return x.reshape(shape).to(dtype).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// diffusers' checks of a custom <c>timesteps</c> list (LCM and DDPM <c>set_timesteps</c>): descending, not empty,
    /// starting before num_train_timesteps. Throws ArgumentException naming <c>timesteps</c>.
    /// </summary>
    public static void CheckCustomTimesteps(IReadOnlyList<int> timesteps, long numTrain)
    {
        ArgumentNullException.ThrowIfNull(timesteps);
        for (int i = 1; i < timesteps.Count; i++)
            if (timesteps[i] >= timesteps[i - 1])
                throw new ArgumentException("`custom_timesteps` must be in descending order.", nameof(timesteps));
        if (timesteps.Count == 0)
            throw new ArgumentException("`timesteps` must not be empty.", nameof(timesteps)); // diffusers: IndexError
        if (timesteps[0] >= numTrain)
            throw new ArgumentException($"`timesteps` must start before `self.config.train_timesteps`: {numTrain}.", nameof(timesteps));
    }
}
