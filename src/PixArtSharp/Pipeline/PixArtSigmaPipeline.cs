namespace PixArtSharp.Pipeline;

/// <summary>
/// diffusers 0.29.2's <c>PixArtSigmaPipeline</c>: PixArt-Σ (512, 1024 and 2K models, the SDXL VAE). It differs from
/// <see cref="PixArtAlphaPipeline"/> in <c>__call__</c> only: <c>max_sequence_length</c> defaults to 300, no
/// micro-conditions are built (<c>added_cond_kwargs</c> is None: the transformer's config decides), the 2048 bins
/// join for sample_size 256, and there is no one-step branch.
/// </summary>
public sealed class PixArtSigmaPipeline : PixArtPipeline
{
    /// <summary>Builds the pipeline from its components (diffusers' <c>__init__</c>).</summary>
    internal PixArtSigmaPipeline(PipelineComponents components, PipelineOptions options) : base(components, options) { }

    /// <inheritdoc/>
    public override string ClassName => "PixArtSigmaPipeline";
    /// <inheritdoc/>
    public override int DefaultMaxSequenceLength => 300;
    /// <inheritdoc/>
    public override IReadOnlyList<AspectRatioBin> AspectRatioBins => Pipeline.AspectRatioBins.BinsForSampleSize(TransformerConfig.SampleSize!.Value, with2048: true);
    /// <inheritdoc/>
    private protected override bool PreparesMicroConditions => false;
    /// <inheritdoc/>
    private protected override bool HasOneStepBranch => false;
}
