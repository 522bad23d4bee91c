using PixArtSharp.Pipeline;

namespace PixArtSharp.Tests.Support;

/// <summary>
/// The two tiny fixture pipelines (PixArt-LCM and the DPM-Solver++ PixArt-α), loaded once per test class that takes
/// them as an xunit class fixture.
/// </summary>
public sealed class TinyPipelines : IDisposable
{
    public readonly PixArtAlphaPipeline Lcm = PixArtAlphaPipeline.FromPretrained(Fixtures.Path("tiny-pixart-lcm"));
    public readonly PixArtAlphaPipeline Dpm = PixArtAlphaPipeline.FromPretrained(Fixtures.Path("tiny-pixart"));
    public void Dispose() { Lcm.Dispose(); Dpm.Dispose(); }
}
