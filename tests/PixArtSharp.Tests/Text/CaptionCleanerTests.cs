using PixArtSharp.Text;

namespace PixArtSharp.Tests.Text;

/// <summary>Expected values come from the upstream Python code (diffusers _clean_caption on CPython 3.11 with
/// beautifulsoup4 4.11.2); none of these inputs is touched by ftfy's mojibake repair, which is not ported.</summary>
public class CaptionCleanerTests
{
    [Theory]
    [InlineData("ΟΔΟΣ ΣΑΣ", "οδος σας")]                // str.lower applies final sigma
    [InlineData("İstanbul", "i\u0307stanbul")]           // and full case mappings
    [InlineData("\u001c cat \u001f", "cat")]              // str.strip counts U+001C–U+001F as whitespace
    public void LowerStripIsPythons(string prompt, string expected)
    {
        Assert.Equal(expected, CaptionCleaner.Preprocess(prompt, cleanCaption: false));
        Assert.Equal(expected, CaptionCleaner.Preprocess(prompt, cleanCaption: true));
    }

    [Theory]
    [InlineData("a%C3%A9b+c %zz %E2%82", "aéb c %zz \ufffd")]
    [InlineData("<script>alert(1)</script>visible <style>p{}</style>text", "visible text")]
    [InlineData("<![CDATA[kept]]> <!-- dropped --> x", "kept x")]
    [InlineData("&ampfoo &copy 2024 &#150; &#x2019;s", "foo 2024 - 's")]
    [InlineData("<b>bold</b>   <i>it</i>", "bold it")]
    [InlineData("ǅungla ﬂower", "džungla flower")]
    [InlineData("a\u00a0b", "a b")]
    [InlineData("a\ufffeb", "a\ufffeb")] // .NET's Normalize rejects noncharacters; CPython's does not
    public void CleanCaption(string prompt, string expected) =>
        Assert.Equal(expected, CaptionCleaner.Preprocess(prompt, cleanCaption: true));

    [Fact]
    public void CleaningWithoutCleanCaptionOnlyLowersAndStrips() =>
        Assert.Equal("<b>x</b> &amp; y", CaptionCleaner.Preprocess("  <B>X</B> &amp; Y \n", cleanCaption: false));
}
