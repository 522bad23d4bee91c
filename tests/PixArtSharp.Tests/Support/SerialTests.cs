namespace PixArtSharp.Tests.Support;

/// <summary>Tests that run alone, after every parallel collection has finished (see their class comments for why).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialTests
{
    public const string Name = "Serial";
}
