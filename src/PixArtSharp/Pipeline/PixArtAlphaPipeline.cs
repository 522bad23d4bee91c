using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Schedulers;
using PixArtSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Pipeline;

/// <summary>How a pipeline is loaded.</summary>
public sealed record PipelineOptions
{
    /// <summary>The dtype weights are held and computed in: fp32 (exact), bf16 (fast on CPUs with AVX-512-BF16), fp16.</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;
    public Device? Device { get; init; }
    /// <summary>A weights variant such as "fp16" (diffusion_pytorch_model.fp16.safetensors).</summary>
    public string? Variant { get; init; }
    /// <summary>Overrides the scheduler named in model_index.json: "lcm", "dpm-solver" or "sa-solver".</summary>
    public string? Scheduler { get; init; }
    /// <summary>
    /// Keep every component in memory between calls (a server). When false, each component is loaded when its
    /// stage starts and freed when it ends, so only one of T5 (9.5 GB in bf16), the transformer and the VAE is
    /// resident at a time.
    /// </summary>
    public bool KeepLoaded { get; init; } = true;
}

/// <summary>
/// diffusers' PixArtAlphaPipeline: prompt → T5 states → PixArt transformer denoising loop → SD VAE → image.
/// Stages are numbered as in PixArtAlphaPipeline.__call__ (v0.29.2) so the two can be read side by side.
/// </summary>
public sealed class PixArtAlphaPipeline : IDisposable
{
    private T5EncoderModel? _textEncoder;
    private PixArtTransformer2DModel? _transformer;
    private AutoencoderKL? _vae;

    public ModelFolder Folder { get; }
    public PipelineOptions Options { get; }
    public T5Tokenizer Tokenizer { get; }
    public PixArtTransformerConfig TransformerConfig { get; }
    public AutoencoderKLConfig VaeConfig { get; }
    /// <summary>The default scheduler (model_index.json's, or PipelineOptions.Scheduler). Each call runs a fresh one.</summary>
    public IScheduler Scheduler { get; }
    public Device Device { get; }
    /// <summary>
    /// Things the user should know about how the model was loaded, e.g. a component without the requested
    /// variant that loads its default weights (diffusers logs the same). A front end prints them.
    /// </summary>
    public IReadOnlyList<string> Warnings { get; }

    /// <summary>2^(len(block_out_channels) − 1): 8 for the SD VAE.</summary>
    public int VaeScaleFactor => 1 << (VaeConfig.BlockOutChannels.Length - 1);

    /// <summary>Model defaults: LCM runs 4 steps without guidance; DPM-Solver++ 20 steps at 4.5 (diffusers' defaults).</summary>
    public int DefaultSteps => Scheduler.DefaultSteps;
    public double DefaultGuidance => Scheduler.DefaultGuidance;
    private int SampleSize => TransformerConfig.SampleSize!.Value;
    private int InChannels => TransformerConfig.InChannels!.Value;
    public int DefaultHeight => SampleSize * VaeScaleFactor;
    public int DefaultWidth => SampleSize * VaeScaleFactor;

    private PixArtAlphaPipeline(ModelFolder folder, PipelineOptions options)
    {
        Folder = folder;
        Options = options;
        Device = options.Device ?? CPU;
        Tokenizer = T5Tokenizer.FromModelFolder(folder.ComponentDir("tokenizer"));
        TransformerConfig = PixArtTransformerConfig.Load(Path.Combine(folder.ComponentDir("transformer"), "config.json"));
        VaeConfig = AutoencoderKLConfig.Load(Path.Combine(folder.ComponentDir("vae"), "config.json"));
        Scheduler = SchedulerFactory.Create(folder, options.Scheduler);
        Warnings = folder.VariantFallbacks(options.Variant);
    }

    public static PixArtAlphaPipeline FromPretrained(string folder, PipelineOptions? options = null)
    {
        options ??= new PipelineOptions();
        var pipe = new PixArtAlphaPipeline(ModelFolder.Open(folder), options);
        if (options.KeepLoaded)
        {
            pipe.LoadTextEncoder();
            pipe.LoadTransformer();
            pipe.LoadVae();
        }
        return pipe;
    }

    public T5EncoderModel LoadTextEncoder() =>
        _textEncoder ??= T5EncoderModel.FromFolder(Folder.ComponentDir("text_encoder"), Options.Variant, Options.DType, Device);

    public PixArtTransformer2DModel LoadTransformer() =>
        _transformer ??= PixArtTransformer2DModel.FromFolder(Folder.ComponentDir("transformer"), Options.Variant, Options.DType, Device);

    public AutoencoderKL LoadVae() =>
        _vae ??= AutoencoderKL.FromFolder(Folder.ComponentDir("vae"), Options.Variant, Options.DType, Device);

    private void Release<T>(ref T? component) where T : class, IDisposable
    {
        if (Options.KeepLoaded || component is null) return;
        component.Dispose();
        component = null;
        GC.Collect();
    }

    /// <summary>
    /// diffusers' encode_prompt: T5 states and masks for the prompts (each repeated num_images_per_prompt times)
    /// and, with classifier-free guidance, for the negative prompts. Precomputed embeddings pass through.
    /// </summary>
    public (PromptEmbeddings Positive, PromptEmbeddings? Negative) EncodePrompt(
        IReadOnlyList<string>? prompts,
        bool doClassifierFreeGuidance = true,
        IReadOnlyList<string>? negativePrompts = null,
        int numImagesPerPrompt = 1,
        PromptEmbeddings? promptEmbeds = null,
        PromptEmbeddings? negativePromptEmbeds = null,
        bool cleanCaption = false,
        int maxSequenceLength = 120)
    {
        using var scope = NewDisposeScope();
        int batchSize = prompts?.Count ?? (int)promptEmbeds!.Embeds.shape[0];
        negativePrompts ??= [""];

        Tensor embeds, mask;
        if (promptEmbeds is null)
        {
            (embeds, mask) = EncodeText(prompts!, cleanCaption, maxSequenceLength);
        }
        else
        {
            embeds = promptEmbeds.Embeds.to(ScalarType.Float32, Device);
            mask = promptEmbeds.AttentionMask.to(ScalarType.Int64, Device);
        }
        long bsEmbed = embeds.shape[0], seqLen = embeds.shape[1];
        // Duplicate for each image per prompt. The embeddings repeat per prompt (p0,p0,p1,p1) …
        embeds = embeds.repeat(1, numImagesPerPrompt, 1).view(bsEmbed * numImagesPerPrompt, seqLen, -1);
        // … and so does the mask in diffusers 0.29.2's code path we mirror:
        //   prompt_attention_mask = prompt_attention_mask.view(bs_embed, -1).repeat(num_images_per_prompt, 1)
        mask = MaskRepeat(mask.view(bsEmbed, -1), numImagesPerPrompt);

        PromptEmbeddings? negative = null;
        if (doClassifierFreeGuidance)
        {
            Tensor nEmbeds, nMask;
            if (negativePromptEmbeds is null)
            {
                var uncond = negativePrompts.Count == 1 ? Enumerable.Repeat(negativePrompts[0], batchSize).ToList() : negativePrompts.ToList();
                (nEmbeds, nMask) = EncodeText(uncond, cleanCaption, (int)seqLen);
            }
            else
            {
                nEmbeds = negativePromptEmbeds.Embeds.to(ScalarType.Float32, Device);
                nMask = negativePromptEmbeds.AttentionMask.to(ScalarType.Int64, Device);
            }
            long nSeq = nEmbeds.shape[1];
            nEmbeds = nEmbeds.repeat(1, numImagesPerPrompt, 1).view(batchSize * numImagesPerPrompt, nSeq, -1);
            nMask = MaskRepeat(nMask.view(bsEmbed, -1), numImagesPerPrompt);
            negative = new PromptEmbeddings(nEmbeds.MoveToOuterDisposeScope(), nMask.MoveToOuterDisposeScope());
        }
        return (new PromptEmbeddings(embeds.MoveToOuterDisposeScope(), mask.MoveToOuterDisposeScope()), negative);
    }

    private static Tensor MaskRepeat(Tensor mask, int n) => mask.repeat(n, 1);

    /// <summary>Preprocess, tokenize (padded to maxLength, masked) and run T5.</summary>
    private (Tensor Embeds, Tensor Mask) EncodeText(IReadOnlyList<string> texts, bool cleanCaption, int maxLength)
    {
        var cleaned = texts.Select(t => CaptionCleaner.Preprocess(t, cleanCaption)).ToList();
        var batch = Tokenizer.Encode(cleaned, maxLength);
        var ids = tensor(batch.InputIds, [cleaned.Count, maxLength], ScalarType.Int64, Device);
        var mask = tensor(batch.AttentionMask, [cleaned.Count, maxLength], ScalarType.Int64, Device);
        var encoder = LoadTextEncoder();
        using (no_grad())
        {
            var states = encoder.forward(ids, mask).to(ScalarType.Float32);
            return (states, mask);
        }
    }

    /// <summary>Frees the text encoder now (only meaningful with KeepLoaded = false, or to save memory by hand).</summary>
    public void UnloadTextEncoder()
    {
        _textEncoder?.Dispose();
        _textEncoder = null;
    }

    /// <summary>Runs the whole pipeline. Throws OperationCanceledException when cancelled (token or callback).</summary>
    public PipelineOutput Generate(GenerationRequest request, Func<StepInfo, bool>? onStep = null, CancellationToken cancellationToken = default)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();

        // 0. Defaults from the model (diffusers: height = sample_size · vae_scale_factor). A fresh scheduler per call
        //    keeps its step state (index, multistep history) out of other calls.
        using var scheduler = CreateScheduler(request.Scheduler);
        int steps = request.Timesteps?.Count ?? request.NumInferenceSteps ?? scheduler.DefaultSteps;
        double guidance = request.GuidanceScale ?? scheduler.DefaultGuidance;
        int height = request.Height ?? DefaultHeight;
        int width = request.Width ?? DefaultWidth;
        // Image-to-image: the output has the input image's size, and is never binned.
        if (request.Image is not null) (height, width) = CheckImageInputs(request);
        else if (request.Strength is not null)
            throw new ArgumentException("`strength` is only used for image-to-image: give an `image` too.", nameof(request.Strength));
        bool binning = request.UseResolutionBinning && request.Image is null;
        int origHeight = height, origWidth = width;

        // 1. Check inputs. Raise error if not correct.
        CheckInputs(request, scheduler, height, width, steps, guidance);
        if (binning)
        {
            var bins = AspectRatioBins.BinsForSampleSize(SampleSize);
            (height, width) = AspectRatioBins.ClassifyHeightWidthBin(height, width, bins);
        }

        // 2. Batch size and guidance.
        int batchSize = request.Prompts?.Count ?? (int)request.PromptEmbeds!.Embeds.shape[0];
        int total = batchSize * request.NumImagesPerPrompt;
        bool doCfg = guidance > 1.0;

        // 3. Encode input prompt.
        var (positive, negative) = EncodePrompt(request.Prompts, doCfg, request.NegativePrompts, request.NumImagesPerPrompt,
            request.PromptEmbeds, request.NegativePromptEmbeds, request.CleanCaption, request.MaxSequenceLength);
        Release(ref _textEncoder);
        var transformer = LoadTransformer();
        var tdtype = Options.DType;
        Tensor promptEmbeds = positive.Embeds, promptMask = positive.AttentionMask;
        if (doCfg)
        {
            promptEmbeds = cat([negative!.Embeds, promptEmbeds], 0);
            promptMask = cat([negative.AttentionMask, promptMask], 0);
        }
        promptEmbeds = promptEmbeds.to(tdtype);

        // 4. Prepare timesteps. Image-to-image keeps the end of the schedule (LCM: compresses it), see ImageToImage.
        long[] timesteps;
        if (request.Image is null)
        {
            scheduler.SetTimesteps(request.Timesteps is null ? steps : null, request.Timesteps);
            timesteps = scheduler.Timesteps;
        }
        else
        {
            timesteps = ImageToImage.SetTimesteps(scheduler, request.Timesteps is null ? steps : null, request.Timesteps,
                request.Strength ?? ImageToImage.DefaultStrength).Timesteps;
        }

        // 5. Prepare latents: one fp32 randn of (B·n, C, H/8, W/8) on a CPU generator, as torch draws them
        // (fp16 draws differ from torch's, so the draw is always fp32 and cast afterwards).
        long latentChannels = InChannels;
        long[] latentShape = [total, latentChannels, height / VaeScaleFactor, width / VaeScaleFactor];
        long? seed = request.Generator is null && request.Generators is null ? request.Seed ?? Random.Shared.NextInt64(0, long.MaxValue) : request.Seed;
        var noise = new NoiseSource(request.Generators ?? [request.Generator ?? new Generator((ulong)seed!.Value)]);
        Tensor latents;
        if (request.Image is not null)
        {
            // 5b. Image-to-image: the noised image latent at the first kept timestep.
            latents = PrepareImageLatents(request.Image, scheduler, timesteps[0], latentShape, noise);
        }
        else
        {
            latents = request.Latents is null
                ? noise.Randn(latentShape, ScalarType.Float32, Device)
                : request.Latents.to(ScalarType.Float32, Device);
            latents = latents.mul(scheduler.InitNoiseSigma);
        }

        // 6.1 Prepare micro-conditions (only the 1024 models, sample_size 128, use them).
        Tensor? resolution = null, aspectRatio = null;
        if (SampleSize == 128)
        {
            resolution = tensor(new float[] { height, width }, [1, 2], ScalarType.Float32, Device).repeat(total, 1).to(tdtype);
            aspectRatio = tensor(new float[] { (float)((double)height / width) }, [1, 1], ScalarType.Float32, Device).repeat(total, 1).to(tdtype);
            if (doCfg)
            {
                resolution = cat([resolution, resolution], 0);
                aspectRatio = cat([aspectRatio, aspectRatio], 0);
            }
        }

        // 7. Denoising loop.
        for (int i = 0; i < timesteps.Length; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            using var stepScope = NewDisposeScope();
            long t = timesteps[i];
            var latentModelInput = doCfg ? cat([latents, latents], 0) : latents;
            var currentTimestep = full([latentModelInput.shape[0]], t, ScalarType.Int64, Device);

            // predict noise model_output (8 channels: eps and the learned variance)
            var noisePred = transformer.forward(latentModelInput.to(tdtype), promptEmbeds, promptMask, currentTimestep,
                resolution, aspectRatio).to(ScalarType.Float32);

            // perform guidance, on all 8 channels
            if (doCfg)
            {
                var chunks = noisePred.chunk(2, 0);
                noisePred = chunks[0] + guidance * (chunks[1] - chunks[0]);
            }
            // learned sigma: keep the eps channels
            if (TransformerConfig.OutChannelsResolved / 2 == latentChannels)
                noisePred = noisePred.chunk(2, 1)[0];

            // compute previous image: x_t -> x_t-1. With one step the scheduler's prev_sample already is its
            // denoised estimate (LCM's last step returns it; DPM-Solver++ ends at sigma 0), which is what
            // diffusers' 1-step branch (.pred_original_sample, which crashes in 0.29.2) meant to return.
            var next = scheduler.Step(noisePred, t, latents, noise).MoveToOuterDisposeScope();
            latents.Dispose();
            latents = next;

            if (onStep != null && !onStep(new StepInfo(i + 1, timesteps.Length, t, latents)))
                throw new OperationCanceledException("Cancelled by the step callback.");
        }
        cancellationToken.ThrowIfCancellationRequested();
        Release(ref _transformer);

        if (request.OutputType == OutputType.Latent)
            return new PipelineOutput(null, latents.MoveToOuterDisposeScope(), height, width, seed);

        // 8. Decode: the VAE sees latents / scaling_factor; binning resizes back before the [0,1] postprocess.
        var vae = LoadVae();
        var image = vae.Decode(latents.div(VaeConfig.ScalingFactor).to(Options.DType)).to(ScalarType.Float32);
        Release(ref _vae);
        if (binning)
            image = AspectRatioBins.ResizeAndCropTensor(image, origWidth, origHeight);
        var images = image.div(2).add(0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous();
        return new PipelineOutput(images.MoveToOuterDisposeScope(), latents.MoveToOuterDisposeScope(), (int)images.shape[1], (int)images.shape[2], seed);
    }

    private IScheduler CreateScheduler(string? name)
    {
        try { return SchedulerFactory.Create(Folder, name ?? Options.Scheduler); }
        catch (ArgumentException e) when (name is not null) { throw new ArgumentException(e.Message, nameof(GenerationRequest.Scheduler), e); }
    }

    /// <summary>
    /// Image-to-image latents, as StableDiffusionImg2ImgPipeline / LatentConsistencyModelImg2ImgPipeline
    /// prepare_latents compose them (one generator stream; the fixture README's draw order):
    /// VAE encode → sample (random draw 1, the image batch's shape) → × scaling_factor → repeat to the output batch →
    /// noise (random draw 2, the output batch's shape) → scheduler.add_noise at the first kept timestep.
    /// </summary>
    private Tensor PrepareImageLatents(Tensor image, IScheduler scheduler, long latentTimestep, long[] latentShape, NoiseSource noise)
    {
        using var scope = NewDisposeScope();
        long total = latentShape[0];
        // 5b.1 Encode: latent_dist.sample(generator) = mean + std · randn(mean.shape).
        var vae = LoadVae();
        Tensor initLatents;
        using (var dist = vae.Encode(image.to(ScalarType.Float32, Device)))
        {
            var sampleNoise = noise.Randn(dist.mean.shape, ScalarType.Float32, Device);
            initLatents = dist.mean + dist.std * sampleNoise;
        }
        Release(ref _vae);
        // 5b.2 init_latents = scaling_factor · init_latents, one row per output image. diffusers tiles
        // (cat([init]·k)); with one image that is the same as repeating it. With one image per prompt the rows are
        // repeated per prompt instead (p0,p0,p1,p1, as the prompt embeddings are), so image b goes with prompt b.
        initLatents = initLatents.mul(VaeConfig.ScalingFactor);
        long n = initLatents.shape[0];
        if (total > n)
            initLatents = n == 1 ? initLatents.expand(total, -1, -1, -1).contiguous() : initLatents.repeat_interleave(total / n, 0);
        // 5b.3 noise = randn(shape, generator); latents = scheduler.add_noise(init_latents, noise, latent_timestep)
        var addNoise = noise.Randn(latentShape, ScalarType.Float32, Device);
        var t = full([total], latentTimestep, ScalarType.Int64, Device);
        var latents = scheduler.AddNoise(initLatents, addNoise, t);
        return latents.MoveToOuterDisposeScope();
    }

    /// <summary>Checks the image-to-image arguments and returns the output size (the image's).</summary>
    private (int Height, int Width) CheckImageInputs(GenerationRequest r)
    {
        var image = r.Image!;
        int multiple = VaeScaleFactor * ImageToImage.PatchSize;
        if (image.dim() != 4 || image.shape[1] != 3)
            throw new ArgumentException($"`image` must be a float tensor (N, 3, H, W) in [-1, 1], but has shape [{string.Join(",", image.shape)}].", nameof(r.Image));
        if (!image.is_floating_point())
            throw new ArgumentException($"`image` must be a float tensor in [-1, 1], but has dtype {image.dtype} (use ImageToImage.Preprocess for 8-bit RGB).", nameof(r.Image));
        int height = (int)image.shape[2], width = (int)image.shape[3];
        if (height < multiple || width < multiple || height % multiple != 0 || width % multiple != 0)
            throw new ArgumentException(
                $"The image is {width}×{height}; image-to-image needs both sides to be multiples of {multiple} (VAE factor {VaeScaleFactor} × patch {ImageToImage.PatchSize}). " +
                $"Crop or resize it, e.g. to {Math.Max(multiple, width / multiple * multiple)}×{Math.Max(multiple, height / multiple * multiple)}.", nameof(r.Image));
        if (r.Height is { } h && h != height || r.Width is { } w && w != width)
            throw new ArgumentException($"Image-to-image output has the image's size {width}×{height}; `height`/`width` ({r.Width}×{r.Height}) must be left unset or equal it.", r.Height != height ? nameof(r.Height) : nameof(r.Width));
        ImageToImage.CheckStrength(r.Strength ?? ImageToImage.DefaultStrength);
        if (r.Latents is not null)
            throw new ArgumentException("Give either `image` (image-to-image) or `latents`, not both.", nameof(r.Latents));
        // (CheckInputs reports a request with neither prompts nor embeddings.)
        int batch = r.Prompts?.Count ?? (r.PromptEmbeds is { } pe ? (int)pe.Embeds.shape[0] : 1);
        long n = image.shape[0];
        if (n != 1 && n != batch)
            throw new ArgumentException($"`image` has {n} images but there are {batch} prompts: give one image, or one per prompt.", nameof(r.Image));
        if (r.Generators is not null && n != batch)
            throw new ArgumentException($"With one generator per prompt, give one image per prompt ({batch}), not {n}.", nameof(r.Image));
        return (height, width);
    }

    private void CheckInputs(GenerationRequest r, IScheduler scheduler, int height, int width, int steps, double guidance)
    {
        if (height % 8 != 0 || width % 8 != 0)
            throw new ArgumentException($"`height` and `width` have to be divisible by 8 but are {height} and {width}.", r.Height % 8 != 0 ? nameof(r.Height) : nameof(r.Width));
        if (height <= 0 || width <= 0)
            throw new ArgumentException($"`height` and `width` must be positive but are {height} and {width}.", nameof(r.Height));
        if (steps < 1)
            throw new ArgumentException($"`num_inference_steps` must be at least 1 but is {steps}.", nameof(r.NumInferenceSteps));
        if (guidance < 0 || double.IsNaN(guidance))
            throw new ArgumentException($"`guidance_scale` must be ≥ 0 but is {guidance}.", nameof(r.GuidanceScale));
        if (r.NumImagesPerPrompt < 1)
            throw new ArgumentException($"`num_images_per_prompt` must be at least 1 but is {r.NumImagesPerPrompt}.", nameof(r.NumImagesPerPrompt));
        if (r.MaxSequenceLength < 1)
            throw new ArgumentException($"`max_sequence_length` must be at least 1 but is {r.MaxSequenceLength}.", nameof(r.MaxSequenceLength));
        if (r.Prompts != null && r.PromptEmbeds != null)
            throw new ArgumentException("Cannot forward both `prompt` and `prompt_embeds`. Please make sure to only forward one of the two.", nameof(r.PromptEmbeds));
        if (r.Prompts == null && r.PromptEmbeds == null)
            throw new ArgumentException("Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined.", nameof(r.Prompts));
        if (r.Prompts is { Count: 0 })
            throw new ArgumentException("`prompt` is an empty list; give at least one prompt.", nameof(r.Prompts));
        if (r.Prompts != null && r.NegativePromptEmbeds != null)
            throw new ArgumentException("Cannot forward both `prompt` and `negative_prompt_embeds`: give negative prompts as text, or both sides as embeddings.", nameof(r.NegativePromptEmbeds));
        if (r.NegativePrompts.Count > 1 && r.NegativePromptEmbeds != null)
            throw new ArgumentException("Cannot forward both `negative_prompt` and `negative_prompt_embeds`. Please make sure to only forward one of the two.", nameof(r.NegativePromptEmbeds));
        int batch = r.Prompts?.Count ?? (int)r.PromptEmbeds!.Embeds.shape[0];
        if (r.NegativePrompts.Count != 1 && r.NegativePrompts.Count != batch)
            throw new ArgumentException($"`negative_prompt` has {r.NegativePrompts.Count} entries but `prompt` has {batch}: give one negative prompt, or one per prompt.", nameof(r.NegativePrompts));
        foreach (var (e, name) in new[] { (r.PromptEmbeds, "prompt_embeds"), (r.NegativePromptEmbeds, "negative_prompt_embeds") })
        {
            if (e is null) continue;
            if ((object?)e.AttentionMask is null)
                throw new ArgumentException($"Must provide the attention mask when specifying `{name}`.", name);
            if (e.Embeds.dim() != 3 || e.AttentionMask.dim() != 2 || e.Embeds.shape[0] != e.AttentionMask.shape[0] || e.Embeds.shape[1] != e.AttentionMask.shape[1])
                throw new ArgumentException($"`{name}` must be (batch, seq, channels) with a (batch, seq) mask, but got [{string.Join(",", e.Embeds.shape)}] and [{string.Join(",", e.AttentionMask.shape)}].", name);
        }
        if (r.PromptEmbeds != null && r.NegativePromptEmbeds != null &&
            !r.PromptEmbeds.Embeds.shape.SequenceEqual(r.NegativePromptEmbeds.Embeds.shape))
            throw new ArgumentException($"`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but got: `prompt_embeds` [{string.Join(",", r.PromptEmbeds.Embeds.shape)}] != `negative_prompt_embeds` [{string.Join(",", r.NegativePromptEmbeds.Embeds.shape)}].", nameof(r.NegativePromptEmbeds));
        if (r.Generators is not null && r.Generators.Count != batch)
            throw new ArgumentException($"`generators` has {r.Generators.Count} entries but there are {batch} prompts: give one generator per prompt.", nameof(r.Generators));
        if (r.Generators is not null && r.Generator is not null)
            throw new ArgumentException("Give either `generator` or `generators`, not both.", nameof(r.Generators));
        if (r.Timesteps != null && !scheduler.AcceptsCustomTimesteps)
            throw new ArgumentException($"The current scheduler class {scheduler.ClassName}'s `set_timesteps` does not support custom timestep schedules. Please check whether you are using the correct scheduler.", nameof(r.Timesteps));
        if (r.Timesteps != null && r.NumInferenceSteps != null && r.NumInferenceSteps != r.Timesteps.Count)
            throw new ArgumentException($"`timesteps` has {r.Timesteps.Count} entries but `num_inference_steps` is {r.NumInferenceSteps}: give one of the two.", nameof(r.Timesteps));
        if (r.Latents is not null)
        {
            int bh = height, bw = width;
            if (r.UseResolutionBinning)
                (bh, bw) = AspectRatioBins.ClassifyHeightWidthBin(height, width, AspectRatioBins.BinsForSampleSize(SampleSize));
            long[] expect = [batch * r.NumImagesPerPrompt, InChannels, bh / VaeScaleFactor, bw / VaeScaleFactor];
            if (!r.Latents.shape.SequenceEqual(expect))
                throw new ArgumentException($"`latents` has shape [{string.Join(",", r.Latents.shape)}] but this request needs [{string.Join(",", expect)}].", nameof(r.Latents));
        }
    }

    public void Dispose()
    {
        _textEncoder?.Dispose();
        _transformer?.Dispose();
        _vae?.Dispose();
        _textEncoder = null; _transformer = null; _vae = null;
        Scheduler.Dispose();
    }
}
