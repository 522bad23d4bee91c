using PixArtSharp.Text;

namespace PixArtSharp.Tests.Text;

public class CaptionCleanerFixtureTests
{
    [Theory]
    [MemberData(nameof(TokenizerCases.All), MemberType = typeof(TokenizerCases))]
    public void PreprocessMatchesPipeline(string id, bool cleanCaption)
    {
        var expected = TokenizerCases.Get(id, cleanCaption);
        Assert.Equal(expected.Text, CaptionCleaner.Preprocess(expected.Prompt, cleanCaption));
    }
}
