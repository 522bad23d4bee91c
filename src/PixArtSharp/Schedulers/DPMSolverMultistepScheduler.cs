using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Schedulers;

/// <summary>
/// Port of diffusers v0.29.2 <c>DPMSolverMultistepScheduler</c> for the configuration PixArt-α uses:
/// <c>algorithm_type</c> "dpmsolver++", <c>solver_order</c> 1 or 2, <c>solver_type</c> "midpoint" or "heun",
/// <c>final_sigmas_type</c> "zero" or "sigma_min", <c>timestep_spacing</c> linspace/leading/trailing, any
/// prediction type, optional thresholding. Configurations diffusers accepts but this port does not implement
/// (dpmsolver / sde variants, third order, Karras or Lu sigmas, learned variance) fail in the constructor with
/// <see cref="NotSupportedException"/>.
/// <para>
/// Scalars (σ, α_t, σ_t, λ, h and the update coefficients) are float32 0-dim tensors computed with the same torch
/// ops as diffusers; the sample is upcast to float32 inside <see cref="Step"/> and the result cast back to the
/// model output's dtype. The model-output history (x₀ predictions) is owned by the scheduler: dispose it, or call
/// <see cref="SetTimesteps"/> again, to free it.
/// </para>
/// <para>
/// One-step schedules: timesteps [999], sigmas [σ₉₉₉, 0]; the single step is first order and lands on σ = 0, so
/// it returns the x₀ prediction (fixtures: <c>set_timesteps(1)</c>). diffusers' PixArt pipeline crashes there
/// (it reads <c>.pred_original_sample</c>); a port should use <c>prev_sample</c>, which is that x₀.
/// </para>
/// </summary>
internal sealed class DPMSolverMultistepScheduler : IScheduler
{
    public SchedulerConfig Config { get; }
    /// <summary>Training tables (float32, CPU, num_train_timesteps values): β, ᾱ, α_t = √ᾱ, σ_t = √(1−ᾱ), λ_t = log α_t − log σ_t.</summary>
    public Tensor Betas { get; }
    public Tensor AlphasCumprod { get; }
    /// <summary>ᾱ_t for the live previews' x̂₀ (<see cref="IScheduler.AlphaProd"/>).</summary>
    public double? AlphaProd(long timestep) { using var a = AlphasCumprod[timestep]; return a.item<float>(); }
    public Tensor AlphaT { get; }
    public Tensor SigmaT { get; }
    public Tensor LambdaT { get; }
    public double InitNoiseSigma => 1.0;
    public string ClassName => "DPMSolverMultistepScheduler";
    /// <summary>diffusers' PixArtAlphaPipeline defaults: 20 steps, guidance 4.5.</summary>
    public int DefaultSteps => 20;
    public double DefaultGuidance => 4.5;
    public bool AcceptsCustomTimesteps => true;
    // DPM-Solver++ (the deterministic algorithm) draws no noise.
    Tensor IScheduler.Step(Tensor modelOutput, long timestep, Tensor sample, NoiseSource? noise) => Step(modelOutput, timestep, sample);
    public int Order => 1;

    public int? NumInferenceSteps { get; private set; }
    /// <summary>The timesteps to run (before <see cref="SetTimesteps"/>: num_train_timesteps−1 … 0).</summary>
    public long[] Timesteps { get; private set; }
    /// <summary>After <see cref="SetTimesteps"/>: σ at each timestep plus the final σ (n+1 values, float32).
    /// Before: the training sigmas √((1−ᾱ)/ᾱ).</summary>
    public float[] Sigmas => (float[])_sigmaValues.Clone();
    /// <summary>Number of steps taken at reduced order so far (saturates at solver_order).</summary>
    public int LowerOrderNums { get; private set; }
    public int? StepIndex { get; private set; }
    public int? BeginIndex { get; private set; }

    private Tensor _sigmas;                 // float32, CPU
    private float[] _sigmaValues;           // the same values, for the per-step scalar math
    private readonly Tensor _trainSigmas;   // √((1−ᾱ)/ᾱ), float32, CPU
    private readonly Tensor?[] _modelOutputs;

    public DPMSolverMultistepScheduler(SchedulerConfig config)
    {
        Config = config ?? throw new ArgumentNullException(nameof(config));
        // Settings diffusers maps onto others.
        if (config.AlgorithmType == "deis") config.AlgorithmType = "dpmsolver++";
        if (config.SolverType is "logrho" or "bh1" or "bh2") config.SolverType = "midpoint";
        ValidateConfig(config);

        Betas = NoiseSchedule.Betas(config, lcm: false);
        AlphasCumprod = NoiseSchedule.AlphasCumprod(Betas);
        // Close to 0 without being 0, so the first sigma is not inf (fp16's smallest subnormal).
        if (config.RescaleBetasZeroSnr)
        {
            using var tiny = torch.tensor(MathF.Pow(2, -24));
            AlphasCumprod[-1] = tiny;
        }

        // Only the VP-type noise schedule is supported. The tables are elementwise float32 sqrt/log, computed in C#
        // (correctly rounded sqrt as PyTorch 1.13's kernels; libtorch 2.10's pow(·, 0.5) can be an ulp off).
        float[] acp = AlphasCumprod.data<float>().ToArray();
        float[] alphaT = acp.Select(MathF.Sqrt).ToArray();
        float[] sigmaT = acp.Select(a => MathF.Sqrt(1f - a)).ToArray();
        AlphaT = torch.tensor(alphaT);
        SigmaT = torch.tensor(sigmaT);
        LambdaT = torch.tensor(alphaT.Zip(sigmaT, (a, sg) => MathF.Log(a) - MathF.Log(sg)).ToArray());
        _trainSigmas = torch.tensor(acp.Select(a => MathF.Sqrt((1f - a) / a)).ToArray());

        _sigmas = _trainSigmas.clone();
        _sigmaValues = _sigmas.data<float>().ToArray();
        Timesteps = Enumerable.Range(0, config.NumTrainTimesteps).Reverse().Select(t => (long)t).ToArray();
        _modelOutputs = new Tensor?[config.SolverOrder];
    }

    public static DPMSolverMultistepScheduler FromConfig(string path)
    {
        var config = SchedulerConfig.Load(path);
        return SchedulerConfig.Build(path, () => new DPMSolverMultistepScheduler(config));
    }

    private static void ValidateConfig(SchedulerConfig c)
    {
        string[] algorithms = ["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"];
        if (!algorithms.Contains(c.AlgorithmType))
            throw new ArgumentException($"algorithm_type '{c.AlgorithmType}' is not implemented for DPMSolverMultistepScheduler.", nameof(c));
        if (c.SolverType is not ("midpoint" or "heun"))
            throw new ArgumentException($"solver_type '{c.SolverType}' is not implemented for DPMSolverMultistepScheduler.", nameof(c));
        if (c.AlgorithmType is not ("dpmsolver++" or "sde-dpmsolver++") && c.FinalSigmasType == "zero")
            throw new ArgumentException(
                $"`final_sigmas_type` {c.FinalSigmasType} is not supported for `algorithm_type` {c.AlgorithmType}. Please choose `sigma_min` instead.", nameof(c));
        // Valid in diffusers, not implemented here.
        if (c.AlgorithmType != "dpmsolver++")
            throw new NotSupportedException($"algorithm_type '{c.AlgorithmType}' is not supported by this port; use \"dpmsolver++\".");
        if (c.SolverOrder is not (1 or 2))
            throw new NotSupportedException($"solver_order {c.SolverOrder} is not supported by this port; use 1 or 2.");
        if (c.UseKarrasSigmas)
            throw new NotSupportedException("use_karras_sigmas = true is not supported by this port.");
        if (c.UseLuLambdas)
            throw new NotSupportedException("use_lu_lambdas = true is not supported by this port.");
        if (c.VarianceType is "learned" or "learned_range")
            throw new NotSupportedException(
                $"variance_type '{c.VarianceType}' is not supported by this port: pass only the predicted noise channels to step().");
        if (c.PredictionType is not ("epsilon" or "sample" or "v_prediction"))
            throw new ArgumentException(
                $"prediction_type given as {c.PredictionType} must be one of `epsilon`, `sample`, or `v_prediction` for the DPMSolverMultistepScheduler.", nameof(c));
    }

    public void SetBeginIndex(int beginIndex = 0) => BeginIndex = beginIndex;

    /// <summary>Identity: DPM-Solver does not scale the model input.</summary>
    public Tensor ScaleModelInput(Tensor sample) => sample;

    /// <summary>
    /// diffusers <c>set_timesteps(num_inference_steps, device, timesteps)</c>: integer timesteps by
    /// <c>timestep_spacing</c> (or the given custom ones), σ = interp(t, arange(N), √((1−ᾱ)/ᾱ)) in float64, then the
    /// final σ (0 or σ_min) appended and everything stored as float32. Resets the step index and the history.
    /// </summary>
    public void SetTimesteps(int? numInferenceSteps, IReadOnlyList<int>? timesteps = null)
    {
        if (numInferenceSteps is null && timesteps is null)
            throw new ArgumentException("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.", nameof(numInferenceSteps));
        if (numInferenceSteps is not null && timesteps is not null)
            throw new ArgumentException("Can only pass one of `num_inference_steps` or `custom_timesteps`.", nameof(timesteps));

        long[] ts;
        int numTrain = Config.NumTrainTimesteps;
        if (timesteps is not null)
        {
            ts = timesteps.Select(t => (long)t).ToArray();
        }
        else
        {
            int n = numInferenceSteps!.Value;
            if (n < 0)
                throw new ArgumentException($"Number of samples, {n + 1}, must be non-negative.", nameof(numInferenceSteps));
            // Clip the minimum of λ(t) for numerical stability (critical for the cosine schedule):
            // torch.searchsorted(flip(λ), lambda_min_clipped) = how many λ lie below it.
            float[] lambdas = LambdaT.data<float>().ToArray();
            int clippedIdx = lambdas.Count(l => l < Config.LambdaMinClipped);
            long lastTimestep = numTrain - clippedIdx;

            switch (Config.TimestepSpacingFor(lcm: false))
            {
                case "linspace":
                    {
                        // np.linspace(0, last−1, n+1).round()[::-1][:-1].astype(int64)
                        double[] y = NpLinspace(0, lastTimestep - 1, n + 1);
                        ts = y.Reverse().Take(n).Select(v => (long)Math.Round(v, MidpointRounding.ToEven)).ToArray();
                        break;
                    }
                case "leading":
                    {
                        if (n + 1 == 0) throw new ArgumentException("num_inference_steps must not be -1.", nameof(numInferenceSteps));
                        long stepRatio = LCMScheduler.FloorDiv(lastTimestep, n + 1);
                        ts = Enumerable.Range(0, n + 1).Select(i => i * stepRatio).Reverse().Take(n)
                            .Select(t => t + Config.StepsOffset).ToArray();
                        break;
                    }
                case "trailing":
                    {
                        // np.arange(last, 0, −N/n).round() − 1: numpy fills start + i·((start+δ) − start).
                        double stepRatio = (double)numTrain / n;
                        double start = lastTimestep, delta = -stepRatio;
                        long len = Math.Max(0, (long)Math.Ceiling((0 - start) / delta));
                        double d = len > 1 ? (start + delta) - start : delta;
                        ts = new long[len];
                        for (long i = 0; i < len; i++)
                        {
                            double v = i == 0 ? start : i == 1 ? start + delta : start + i * d;
                            ts[i] = (long)Math.Round(v, MidpointRounding.ToEven) - 1;
                        }
                        break;
                    }
                default:
                    throw new ArgumentException(
                        $"{Config.TimestepSpacing} is not supported. Please make sure to choose one of 'linspace', 'leading' or 'trailing'.",
                        nameof(numInferenceSteps));
            }
        }

        // σ at each (integer) timestep: np.interp at integer points returns the table value exactly; outside
        // [0, N−1] it clamps to the end values.
        float[] train = _trainSigmas.data<float>().ToArray();
        var sigmas = new float[ts.Length + 1];
        for (int i = 0; i < ts.Length; i++) sigmas[i] = train[Math.Clamp(ts[i], 0, train.Length - 1)];
        sigmas[^1] = Config.FinalSigmasType switch
        {
            "sigma_min" => train[0],
            "zero" => 0f,
            _ => throw new ArgumentException(
                $"`final_sigmas_type` must be one of 'zero', or 'sigma_min', but got {Config.FinalSigmasType ?? "None"}", nameof(numInferenceSteps)),
        };

        _sigmas.Dispose();
        _sigmas = torch.tensor(sigmas);
        _sigmaValues = sigmas;
        Timesteps = ts;
        NumInferenceSteps = ts.Length;
        ClearHistory();
        LowerOrderNums = 0;
        StepIndex = null;
        BeginIndex = null;
    }

    /// <summary>numpy.linspace(start, stop, num) in float64, with numpy's exact arithmetic (i·step + start, last = stop).</summary>
    internal static double[] NpLinspace(double start, double stop, int num)
    {
        var y = new double[num];
        int div = num - 1;
        double delta = stop - start;
        if (div > 0)
        {
            double step = delta / div;
            for (int i = 0; i < num; i++) y[i] = (step == 0 ? i / (double)div * delta : i * step) + start;
        }
        else
        {
            for (int i = 0; i < num; i++) y[i] = i * delta + start;
        }
        if (num > 1) y[num - 1] = stop;
        return y;
    }

    /// <summary>(α_t, σ_t) = (1/√(σ²+1), σ·α_t), elementwise in σ's dtype.</summary>
    private static (Tensor Alpha, Tensor Sigma) SigmaToAlphaSigmaT(Tensor sigma)
    {
        var alpha = (sigma * sigma + 1).sqrt().reciprocal();   // Python `1 / x` = x.reciprocal() * 1; `** 0.5` = sqrt
        return (alpha, sigma * alpha);
    }

    /// <summary>
    /// The same for one float32 σ of the schedule, plus λ = log α_t − log σ_t. diffusers does this on float32 0-dim
    /// tensors; plain float32 arithmetic gives the same roundings (log is the C library's logf here).
    /// </summary>
    private (float Alpha, float Sigma, float Lambda) ScheduleAt(int index)
    {
        float sigma = _sigmaValues[index];
        float alpha = 1f / MathF.Sqrt(sigma * sigma + 1f);
        float sigmaT = sigma * alpha;
        return (alpha, sigmaT, MathF.Log(alpha) - MathF.Log(sigmaT));
    }

    /// <summary>
    /// The data prediction x₀ DPM-Solver++ integrates: epsilon → (x − σ_t·ε)/α_t, sample → the output itself,
    /// v_prediction → α_t·x − σ_t·v; then optional dynamic thresholding. Uses σ at the current step index.
    /// </summary>
    public Tensor ConvertModelOutput(Tensor modelOutput, Tensor sample)
    {
        if (StepIndex is null) throw new InvalidOperationException("ConvertModelOutput needs a step index: call Step(), or SetBeginIndex() first.");
        using var scope = torch.NewDisposeScope();
        var (a, s, _) = ScheduleAt(StepIndex.Value);
        Tensor x0 = Config.PredictionType switch
        {
            "epsilon" => (sample - s * modelOutput) / a,
            "sample" => modelOutput.alias(),
            "v_prediction" => a * sample - s * modelOutput,
            _ => throw new ArgumentException($"prediction_type given as {Config.PredictionType} must be one of `epsilon`, `sample`, or `v_prediction`."),
        };
        if (Config.Thresholding)
            x0 = NoiseSchedule.ThresholdSample(x0, Config.DynamicThresholdingRatio, Config.SampleMaxValue);
        return x0.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One multistep DPM-Solver++ step from timestep t (step index i) to σ[i+1]. First order at the first step
    /// (empty history) and at the last step (always, with final_sigmas_type "zero"; with lower_order_final when
    /// fewer than 15 steps); second order otherwise (the step before last is also kept at ≤ 2nd order for &lt; 15 steps).
    /// </summary>
    public Tensor Step(Tensor modelOutput, long timestep, Tensor sample)
    {
        if (NumInferenceSteps is null)
            throw new InvalidOperationException("Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler");
        if (StepIndex is null) InitStepIndex(timestep);
        int i = StepIndex!.Value;
        int n = Timesteps.Length;
        if (i >= n)
            throw new InvalidOperationException($"All {n} steps have been taken; call SetTimesteps() again.");

        // Improve numerical stability for small numbers of steps.
        bool lowerOrderFinal = i == n - 1 &&
            (Config.EulerAtFinal || (Config.LowerOrderFinal && n < 15) || Config.FinalSigmasType == "zero");
        bool lowerOrderSecond = i == n - 2 && Config.LowerOrderFinal && n < 15;

        using var scope = torch.NewDisposeScope();
        var x0 = ConvertModelOutput(modelOutput, sample);
        // Shift the history; the scheduler owns its entries (fresh handles, outside every dispose scope).
        _modelOutputs[0]?.Dispose();
        for (int k = 0; k < _modelOutputs.Length - 1; k++) _modelOutputs[k] = _modelOutputs[k + 1];
        _modelOutputs[^1] = x0.alias().DetachFromDisposeScope();

        // Upcast to avoid precision issues when computing prev_sample.
        var sample32 = sample.to(ScalarType.Float32);
        Tensor prev;
        if (Config.SolverOrder == 1 || LowerOrderNums < 1 || lowerOrderFinal)
            prev = FirstOrderUpdate(x0, sample32, i);
        else
            prev = SecondOrderUpdate(_modelOutputs[^1]!, _modelOutputs[^2]!, sample32, i);
        // (solver_order ≤ 2 here, so diffusers' `lower_order_second` branch is the second-order update too.)
        _ = lowerOrderSecond;

        if (LowerOrderNums < Config.SolverOrder) LowerOrderNums++;
        // Cast back to the model output's dtype.
        prev = prev.to(x0.dtype);
        StepIndex = i + 1;
        return prev.MoveToOuterDisposeScope();
    }

    /// <summary>DPM-Solver++ first order (≡ DDIM): x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·x₀.</summary>
    private Tensor FirstOrderUpdate(Tensor x0, Tensor sample, int i)
    {
        var (alphaT, sigmaT, lambdaT) = ScheduleAt(i + 1);
        var (_, sigmaS, lambdaS) = ScheduleAt(i);
        float h = lambdaT - lambdaS;
        // At σ = 0 (final_sigmas_type "zero"): σ_t = 0, λ_t = +∞, e^{−h} = 0, so x_t = x₀.
        float c1 = sigmaT / sigmaS;
        float c2 = alphaT * (MathF.Exp(-h) - 1f);
        using var a = c1 * sample;
        using var b = c2 * x0;
        return a - b;
    }

    /// <summary>Multistep DPM-Solver++ second order with D0 = m0, D1 = (m0 − m1)/r0, r0 = h₀/h.</summary>
    private Tensor SecondOrderUpdate(Tensor m0, Tensor m1, Tensor sample, int i)
    {
        using var scope = torch.NewDisposeScope();
        var (alphaT, sigmaT, lambdaT) = ScheduleAt(i + 1);
        var (_, sigmaS0, lambdaS0) = ScheduleAt(i);
        var (_, _, lambdaS1) = ScheduleAt(i - 1);
        float h = lambdaT - lambdaS0, h0 = lambdaS0 - lambdaS1;
        float r0 = h0 / h;
        var d1 = (1f / r0) * (m0 - m1);
        float c1 = sigmaT / sigmaS0;
        float expm1 = MathF.Exp(-h) - 1f;
        float c2 = alphaT * expm1;
        Tensor x;
        if (Config.SolverType == "midpoint")
        {
            // See arXiv 2211.01095 for the derivation.
            float c3 = 0.5f * (alphaT * expm1);
            x = c1 * sample - c2 * m0 - c3 * d1;
        }
        else
        {
            float c3 = alphaT * (expm1 / h + 1f);
            x = c1 * sample - c2 * m0 + c3 * d1;
        }
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Index of <paramref name="timestep"/> in the schedule: the second match if it occurs twice, the last index if
    /// it does not occur.
    /// </summary>
    public int IndexForTimestep(long timestep)
    {
        var matches = Enumerable.Range(0, Timesteps.Length).Where(k => Timesteps[k] == timestep).Take(2).ToArray();
        return matches.Length switch
        {
            0 => Timesteps.Length - 1,
            > 1 => matches[1],
            _ => matches[0],
        };
    }

    private void InitStepIndex(long timestep) => StepIndex = BeginIndex ?? IndexForTimestep(timestep);

    /// <summary>
    /// Forward noising in σ form: α_t·x₀ + σ_t·noise with α_t = 1/√(σ²+1), σ_t = σ·α_t, σ taken (in the sample's dtype) at
    /// the begin index (img2img, before the first step), the current step index (after a step), or the timestep's
    /// index in the schedule when no begin index was set.
    /// </summary>
    public Tensor AddNoise(Tensor originalSamples, Tensor noise, Tensor timesteps)
    {
        using var scope = torch.NewDisposeScope();
        var sigmas = _sigmas.to(originalSamples.dtype).to(originalSamples.device);
        long[] ts = timesteps.to(ScalarType.Int64).cpu().flatten().data<long>().ToArray();
        long[] stepIndices = BeginIndex is null
            ? ts.Select(t => (long)IndexForTimestep(t)).ToArray()
            : Enumerable.Repeat((long)(StepIndex ?? BeginIndex.Value), ts.Length).ToArray();
        var sigma = sigmas.index_select(0, torch.tensor(stepIndices, device: originalSamples.device)).flatten();
        while (sigma.dim() < originalSamples.dim()) sigma = sigma.unsqueeze(-1);
        var (alphaT, sigmaT) = SigmaToAlphaSigmaT(sigma);
        return (alphaT * originalSamples + sigmaT * noise).MoveToOuterDisposeScope();
    }

    private void ClearHistory()
    {
        for (int k = 0; k < _modelOutputs.Length; k++)
        {
            _modelOutputs[k]?.Dispose();
            _modelOutputs[k] = null;
        }
    }

    public void Dispose()
    {
        ClearHistory();
        _sigmas.Dispose();
        _trainSigmas.Dispose();
        Betas.Dispose();
        AlphasCumprod.Dispose();
        AlphaT.Dispose();
        SigmaT.Dispose();
        LambdaT.Dispose();
    }
}
