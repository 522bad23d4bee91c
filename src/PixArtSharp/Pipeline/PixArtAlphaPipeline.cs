namespace PixArtSharp.Pipeline;

/// <summary>
/// diffusers 0.29.2's <c>PixArtAlphaPipeline</c>: PixArt-α and PixArt-LCM (and one-step DMD models with a
/// <c>DDPMScheduler</c>). 120-token prompts; micro-conditions (resolution, aspect ratio) for sample_size 128;
/// bins for sample_size 128 / 64 / 32; <c>num_inference_steps == 1</c> returns the scheduler's
/// <c>pred_original_sample</c>.
/// </summary>
public sealed class PixArtAlphaPipeline : PixArtPipeline
{
    /// <summary>Builds the pipeline from its components (diffusers' <c>__init__</c>).</summary>
    internal PixArtAlphaPipeline(PipelineComponents components, PipelineOptions options) : base(components, options) { }

    /// <summary>Opens a diffusers folder as a <c>PixArtAlphaPipeline</c>, whatever its model_index.json names.</summary>
    public static new PixArtAlphaPipeline FromPretrained(string folder, PipelineOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        options ??= new PipelineOptions();
        return new PixArtAlphaPipeline(PipelineComponents.FromFolder(Loading.ModelFolder.Open(folder), options), options);
    }

    /// <inheritdoc/>
    public override string ClassName => "PixArtAlphaPipeline";
    /// <inheritdoc/>
    public override int DefaultMaxSequenceLength => 120;
    /// <inheritdoc/>
    public override IReadOnlyList<AspectRatioBin> AspectRatioBins => Pipeline.AspectRatioBins.BinsForSampleSize(TransformerConfig.SampleSize!.Value);
    /// <inheritdoc/>
    private protected override bool PreparesMicroConditions => true;
    /// <inheritdoc/>
    private protected override bool HasOneStepBranch => true;
}
