using static TorchSharp.torch;

namespace PixArtSharp.Pipeline;

/// <summary>
/// Everything one call of the pipeline takes, with diffusers' names and meanings (PixArtAlphaPipeline.__call__).
/// Null means "the model's default". The CLI and the server build this record and share its validation.
/// </summary>
public sealed record GenerationRequest
{
    /// <summary>One prompt or a list (a batch). Null only when <see cref="PromptEmbeds"/> is given.</summary>
    public IReadOnlyList<string>? Prompts { get; init; }
    /// <summary>One negative prompt for every prompt, or one per prompt. Only used with guidance &gt; 1.</summary>
    public IReadOnlyList<string> NegativePrompts { get; init; } = [""];
    /// <summary>Denoising steps; null = the scheduler's default (LCM 4, DPM-Solver++ and SA-Solver 20).</summary>
    public int? NumInferenceSteps { get; init; }
    /// <summary>"lcm", "dpm-solver" or "sa-solver" for this call; null = the pipeline's (model_index.json's unless overridden).</summary>
    public string? Scheduler { get; init; }
    /// <summary>Custom timesteps instead of the scheduler's spacing.</summary>
    public IReadOnlyList<int>? Timesteps { get; init; }
    /// <summary>Classifier-free guidance scale; above 1 the negative prompts are encoded too. Null = the scheduler's default (LCM 0, others 4.5).</summary>
    public double? GuidanceScale { get; init; }
    /// <summary>Images generated for each prompt (at least 1).</summary>
    public int NumImagesPerPrompt { get; init; } = 1;
    /// <summary>Output height in pixels, a multiple of 8; null = the model's default (sample_size × 8, e.g. 1024).</summary>
    public int? Height { get; init; }
    /// <summary>Output width in pixels, a multiple of 8; null = the model's default.</summary>
    public int? Width { get; init; }
    /// <summary>
    /// Run at the nearest trained aspect-ratio bin's size and resize the images back to Height × Width (diffusers'
    /// <c>use_resolution_binning</c>, on by default). Off, both sides must be multiples of 16.
    /// </summary>
    public bool UseResolutionBinning { get; init; } = true;
    /// <summary>Clean the prompts as diffusers' <c>clean_caption</c> does (HTML, URLs, punctuation) before T5 sees them.</summary>
    public bool CleanCaption { get; init; } = true;
    /// <summary>T5 tokens per prompt; null = the pipeline's default (α 120, Σ 300).</summary>
    public int? MaxSequenceLength { get; init; }
    /// <summary>Seeds a CPU generator exactly as torch.Generator('cpu').manual_seed(seed). Ignored if Generator is set.</summary>
    public long? Seed { get; init; }
    /// <summary>The random generator for the initial latents and every noise draw (diffusers' <c>generator</c>); null = seeded from <see cref="Seed"/>, or random.</summary>
    public Generator? Generator { get; init; }
    /// <summary>
    /// One generator per prompt instead of one for the batch: prompt b's num_images_per_prompt rows of initial
    /// latents and of every noise draw come from Generators[b], with that group's shape. A batch of independent
    /// requests (one prompt each, same num_images_per_prompt) then gives each request exactly the images it would
    /// get alone with its own seed.
    /// </summary>
    public IReadOnlyList<Generator>? Generators { get; init; }
    /// <summary>Initial latents (B·num_images, 4, H/8, W/8) instead of drawing them.</summary>
    public Tensor? Latents { get; init; }
    /// <summary>Precomputed prompt states and mask (from <see cref="PixArtPipeline.EncodePrompt"/>) instead of <see cref="Prompts"/>.</summary>
    public PromptEmbeddings? PromptEmbeds { get; init; }
    /// <summary>Precomputed negative prompt states, with <see cref="PromptEmbeds"/> and guidance &gt; 1; null = encoded from <see cref="NegativePrompts"/>.</summary>
    public PromptEmbeddings? NegativePromptEmbeds { get; init; }
    /// <summary>Decoded images (the default) or the final latents only (no VAE decode).</summary>
    public OutputType OutputType { get; init; } = OutputType.Image;
    /// <summary>
    /// Image-to-image (SDEdit): the source image as a float tensor (N, 3, H, W) in [−1, 1] — see
    /// <see cref="ImageToImage.Preprocess"/> for an 8-bit RGB image (<see cref="Imaging.ImageReader"/> reads files).
    /// N is 1 (one image for every prompt and image) or the number of prompts (image b goes with prompt b). H and W
    /// must be multiples of 16 (VAE factor 8 × patch 2); the output has the image's size, Height/Width must be
    /// null or equal to it, and resolution binning is not used. Null = text-to-image.
    /// </summary>
    public Tensor? Image { get; init; }
    /// <summary>
    /// Image-to-image strength in (0, 1]: how far the image is noised (null = 0.8, diffusers' default). LCM runs all
    /// its steps on a schedule compressed into [0, 1000·strength); DPM-Solver++ and SA-Solver run the last
    /// int(steps·strength) steps of their schedule. Only with <see cref="Image"/>.
    /// </summary>
    public double? Strength { get; init; }
}

/// <summary>What <see cref="PixArtPipeline.Generate"/> returns in <see cref="PipelineOutput"/> (diffusers' <c>output_type</c>).</summary>
public enum OutputType
{
    /// <summary>Float images (N, H, W, 3) in [0, 1], as diffusers' output_type "np".</summary>
    Image,
    /// <summary>The final latents, before the VAE (output_type "latent").</summary>
    Latent,
}

/// <summary>T5 states and their attention mask, as encode_prompt returns them. Owns both tensors.</summary>
/// <param name="Embeds">T5 hidden states (batch, tokens, 4096), fp32.</param>
/// <param name="AttentionMask">1 for real tokens, 0 for padding (batch, tokens), int64.</param>
public sealed record PromptEmbeddings(Tensor Embeds, Tensor AttentionMask) : IDisposable
{
    /// <summary>Frees both tensors.</summary>
    public void Dispose() { Embeds.Dispose(); AttentionMask.Dispose(); }
}

/// <summary>What the per-step callback sees. Return false from the callback to cancel.</summary>
/// <param name="Step">1-based step of this request.</param>
/// <param name="TotalSteps">Steps this request runs.</param>
/// <param name="Timestep">The step's timestep.</param>
/// <param name="Latents">The latents after the step (valid during the callback only).</param>
public sealed record StepInfo(int Step, int TotalSteps, long Timestep, Tensor Latents)
{
    /// <summary>Which request of a <see cref="PixArtPipeline.GenerateMany"/> call this step belongs to (0 for Generate).</summary>
    public int Request { get; init; }
    /// <summary>The step's predicted clean latents x̂₀ (fp32, like Latents; valid during the callback only), for live previews; null when the scheduler has no ᾱ table.</summary>
    public Tensor? Denoised { get; init; }
}

/// <summary>Images (N, H, W, 3) in [0, 1] unless latents were asked for, and always the final latents. Owns its tensors.</summary>
/// <param name="Images">Float images (N, H, W, 3) in [0, 1]; null when <see cref="OutputType.Latent"/> was asked for.</param>
/// <param name="Latents">The final latents (N, 4, H/8, W/8), fp32.</param>
/// <param name="Height">Image height in pixels.</param>
/// <param name="Width">Image width in pixels.</param>
/// <param name="Seed">The request's seed, or the random one drawn when it gave neither seed nor generator (so the run can be repeated); null when it gave generators and no seed.</param>
public sealed record PipelineOutput(Tensor? Images, Tensor Latents, int Height, int Width, long? Seed) : IDisposable
{
    /// <summary>8-bit RGB per image, rounded as diffusers' numpy_to_pil does: (x·255).round() (half to even).</summary>
    public byte[][] ToRgb8()
    {
        if (Images is null) throw new InvalidOperationException("This output holds latents, not images.");
        using var scope = NewDisposeScope();
        var bytes = Images.to(ScalarType.Float32).cpu().mul(255).round().clamp(0, 255).to(ScalarType.Byte);
        var result = new byte[bytes.shape[0]][];
        for (int i = 0; i < result.Length; i++)
            result[i] = bytes[i].contiguous().data<byte>().ToArray();
        return result;
    }

    /// <summary>Frees the images and latents.</summary>
    public void Dispose() { Images?.Dispose(); Latents.Dispose(); }
}
