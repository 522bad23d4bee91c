using PixArtSharp.Tests.Support;
using PixArtSharp.Text;

namespace PixArtSharp.Tests.Text;

public class T5TokenizerTests
{
    private static readonly Lazy<T5Tokenizer> _tokenizer = new(() => new T5Tokenizer(TokenizerCases.SpiecePath));
    private static T5Tokenizer Tok => _tokenizer.Value;

    [Fact]
    public void EmptyPromptIsOnlyEos()
    {
        var batch = Tok.Encode([""]);

        long[] expectedIds = new long[120];
        expectedIds[0] = 1;
        Assert.Equal(expectedIds, batch.Row(0).ToArray());
        Assert.Equal(expectedIds, batch.MaskRow(0).ToArray()); // mask is 1 exactly where the id is </s>
        Assert.Equal(1, batch.UntruncatedCounts[0]);
        Assert.False(batch.Truncated(0));
    }

    [Fact]
    public void LongPromptKeeps119TokensAndEos()
    {
        string prompt = string.Join(" ", Enumerable.Repeat("cat", 200));
        var full = Tok.EncodeToIds(prompt);
        Assert.Equal(201, full.Count);

        var batch = Tok.Encode([prompt]);

        var row = batch.Row(0).ToArray();
        Assert.Equal(full.Take(119).Select(x => (long)x), row.Take(119));
        Assert.Equal(1L, row[119]);
        Assert.All(batch.MaskRow(0).ToArray(), m => Assert.Equal(1L, m));
        Assert.Equal(201, batch.UntruncatedCounts[0]);
        Assert.True(batch.Truncated(0));
    }

    [Fact]
    public void BatchRowsAreIndependentAndPadded()
    {
        var batch = Tok.Encode(["a photo of a cat", "", "dog"], maxLength: 8);

        Assert.Equal(3, batch.BatchSize);
        Assert.Equal(24, batch.InputIds.Length);
        Assert.Equal(new long[] { 3, 9, 1202, 13, 3, 9, 1712, 1 }, batch.Row(0).ToArray());
        Assert.Equal(new long[] { 1, 0, 0, 0, 0, 0, 0, 0 }, batch.Row(1).ToArray());
        Assert.Equal(new long[] { 1, 1, 0, 0, 0, 0, 0, 0 }, batch.MaskRow(2).ToArray());
    }

    // SentencePiece emits one <unk> per run of unknown characters; a literal "<unk>" is its own token.
    [Theory]
    [InlineData("東京", new[] { 3, 2, 1 })]
    [InlineData("東 京", new[] { 3, 2, 3, 2, 1 })]
    [InlineData("a東京🐱b", new[] { 3, 9, 2, 115, 1 })]
    [InlineData("<unk><unk>", new[] { 2, 2, 1 })]
    [InlineData("東<unk>京", new[] { 3, 2, 2, 3, 2, 1 })]
    public void UnknownRuns(string text, int[] expected) => Assert.Equal(expected, Tok.EncodeToIds(text));

    // Measured with sentencepiece 0.1.97 and transformers' legacy T5Tokenizer splitting on added tokens.
    [Theory]
    [InlineData("a\u0001b", new[] { 703, 1 })]                          // the normalizer deletes C0 controls
    [InlineData("a\u2034b", new[] { 3, 9, 7079, 17774, 115, 1 })]       // equal-score paths: SentencePiece's pick
    [InlineData("x <extra_id_5>  y", new[] { 3, 226, 32094, 3, 63, 1 })] // extra ids strip the spaces around them
    [InlineData("a </s>b", new[] { 3, 9, 1, 3, 115, 1 })]               // </s> strips nothing
    [InlineData("<extra_id_100>", new[] { 3, 2, 25666, 834, 23, 26, 834, 2915, 3155, 1 })]
    public void SentencePieceAndSpecialTokens(string text, int[] expected) => Assert.Equal(expected, Tok.EncodeToIds(text));

    [Fact]
    public void PiecesAndVocabulary()
    {
        Assert.Equal(32100, Tok.Count);
        Assert.Equal(["▁", "a", "<extra_id_0>", "<extra_id_99>", "</s>"], Tok.Pieces([3, 9, 32099, 32000, 1]));
    }

    [Fact]
    public void LoadsFromPipelineFolder()
    {
        var tok = T5Tokenizer.FromModelFolder(Fixtures.Path("tiny-pixart", "tokenizer"));
        Assert.Equal(Tok.EncodeToIds("a small cactus"), tok.EncodeToIds("a small cactus"));
    }
}
