using PixArtSharp.Text;

namespace PixArtSharp.Tests.Text;

public class T5TokenizerFixtureTests
{
    private static readonly Lazy<T5Tokenizer> _tokenizer = new(() => new T5Tokenizer(TokenizerCases.SpiecePath));

    /// <summary>Tokenizes the fixture's already-preprocessed text, so tokenizer faults show apart from cleaning faults.</summary>
    [Theory]
    [MemberData(nameof(TokenizerCases.All), MemberType = typeof(TokenizerCases))]
    public void TokenizesFixtureText(string id, bool cleanCaption)
    {
        var expected = TokenizerCases.Get(id, cleanCaption);
        var tok = _tokenizer.Value;

        var batch = tok.Encode([expected.Text]);

        Assert.Equal(expected.InputIds, batch.Row(0).ToArray());
        Assert.Equal(expected.AttentionMask, batch.MaskRow(0).ToArray());
        Assert.Equal(expected.UntruncatedNumTokens, batch.UntruncatedCounts[0]);
        Assert.Equal(expected.Truncated, batch.Truncated(0));
        Assert.Equal(expected.NumTokens, (int)batch.MaskRow(0).ToArray().Sum());
        Assert.Equal(expected.Pieces, tok.Pieces(batch.Row(0)[..expected.NumTokens].ToArray().Select(x => (int)x)));
    }

    /// <summary>The whole front end: preprocessing as the pipeline does it, then tokenization.</summary>
    [Theory]
    [MemberData(nameof(TokenizerCases.All), MemberType = typeof(TokenizerCases))]
    public void PromptToIds(string id, bool cleanCaption)
    {
        var expected = TokenizerCases.Get(id, cleanCaption);

        var batch = _tokenizer.Value.Encode([CaptionCleaner.Preprocess(expected.Prompt, cleanCaption)]);

        Assert.Equal(expected.InputIds, batch.Row(0).ToArray());
        Assert.Equal(expected.AttentionMask, batch.MaskRow(0).ToArray());
        Assert.Equal(expected.UntruncatedNumTokens, batch.UntruncatedCounts[0]);
    }
}
