using System.Text;
using System.Text.RegularExpressions;

namespace PixArtSharp.Text;

/// <summary>
/// diffusers 0.29.2 <c>PixArtAlphaPipeline._text_preprocessing</c> for one prompt, including <c>_clean_caption</c>
/// (shared with DeepFloyd IF) with its dependencies: <c>urllib.parse.unquote_plus</c>, BeautifulSoup's text
/// (<see cref="SoupText"/>), <c>ftfy.fix_text</c> (<see cref="Ftfy"/>) and <c>html.unescape</c> (<see cref="PyHtml"/>).
/// </summary>
/// <remarks>
/// The patterns are Python <c>re</c> patterns rewritten so .NET matches the same text: Python's <c>\w</c> is
/// letters, numbers (any N category) and '_', while .NET's also takes combining marks and all connector punctuation
/// and leaves out Nl/No; Python's <c>\b</c> follows its <c>\w</c>; Python's <c>\s</c> also takes U+001C–U+001F.
/// One gap remains: .NET matches UTF-16 units, so a letter outside the BMP (e.g. U+20000) is not a word
/// character here, though it is in Python.
/// </remarks>
internal static class CaptionCleaner
{
    private const string W = @"[\p{L}\p{N}_]";
    private const string WordChars = @"\p{L}\p{N}_";
    private const string B = @"(?:(?<=" + W + ")(?!" + W + ")|(?<!" + W + ")(?=" + W + "))";
    private const string Sp = @"[\s\x1c-\x1f]";
    private const string NotSp = @"[^\s\x1c-\x1f]";

    private const RegexOptions Options = RegexOptions.CultureInvariant;

    private static Regex R(string pattern) => new(pattern, Options);

    private static readonly Regex Person = R("<person>");

    // r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)))"
    private static readonly Regex Url1 = R(B + @"((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[" + WordChars + @"/-]*" + B + @"\/?(?!@)))");
    private static readonly Regex Url2 = R(B + @"((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[" + WordChars + @"/-]*" + B + @"\/?(?!@)))");

    // r"@[\w\d]+\b"
    private static readonly Regex Nickname = R("@" + W + "+" + B);

    private static readonly Regex[] Cjk =
    [
        R(@"[\u31c0-\u31ef]+"), // CJK Strokes
        R(@"[\u31f0-\u31ff]+"), // Katakana Phonetic Extensions
        R(@"[\u3200-\u32ff]+"), // Enclosed CJK Letters and Months
        R(@"[\u3300-\u33ff]+"), // CJK Compatibility
        R(@"[\u3400-\u4dbf]+"), // CJK Unified Ideographs Extension A
        R(@"[\u4dc0-\u4dff]+"), // Yijing Hexagram Symbols
        R(@"[\u4e00-\u9fff]+"), // CJK Unified Ideographs
    ];

    private static readonly Regex Dashes = R(@"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0\uFE31\uFE32\uFE58\uFE63\uFF0D]+");
    private static readonly Regex DoubleQuotes = R("[`´«»“”¨]");
    private static readonly Regex SingleQuotes = R("[‘’]");
    private static readonly Regex Quot = R("&quot;?");
    private static readonly Regex Amp = R("&amp");
    private static readonly Regex IpAddress = R(@"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}");
    private static readonly Regex ArticleId = R(@"\d:\d\d" + Sp + "+$");
    private static readonly Regex LiteralNewline = R(@"\\n");
    private static readonly Regex ShortHashId = R(@"#\d{1,3}" + B);
    private static readonly Regex LongHashId = R(@"#\d{5,}" + B);
    private static readonly Regex LongNumber = R(B + @"\d{6,}" + B);
    private static readonly Regex FileName = R(NotSp + @"+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)");
    private static readonly Regex RepeatedQuotes = R(@"[""']{2,}");
    private static readonly Regex RepeatedDots = R(@"[\.]{2,}");

    // bad_punct_regex: r"[" + "#®•©™&@·º½¾¿¡§~" + "\)" + "\(" + "\]" + "\[" + "\}" + "\{" + "\|" + "\\" + "\/" + "\*" + r"]{1,}"
    private static readonly Regex BadPunct = R(@"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\/\*]{1,}");
    private static readonly Regex LoneDot = R(Sp + @"+\." + Sp + "+");
    private static readonly Regex DashOrUnderscore = R(@"(?:\-|_)");

    private static readonly Regex Code1 = R(B + @"[a-zA-Z]{1,3}\d{3,15}" + B);                 // jc6640
    private static readonly Regex Code2 = R(B + @"[a-zA-Z]+\d+[a-zA-Z]+" + B);                  // jc6640vc
    private static readonly Regex Code3 = R(B + @"\d+[a-zA-Z]+\d+" + B);                        // 6640vc231
    private static readonly Regex Shipping = R("(worldwide" + Sp + "+)?(free" + Sp + "+)?shipping");
    private static readonly Regex Download = R("(free" + Sp + ")?download(" + Sp + "free)?");
    private static readonly Regex ClickFor = R(B + "click" + B + Sp + "(?:for|on)" + Sp + W + "+");
    private static readonly Regex Extension = R(B + "(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(" + Sp + "image[s]?)?");
    private static readonly Regex Page = R(B + "page" + Sp + @"+\d+" + B);
    private static readonly Regex Code4 = R(B + @"\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*" + B); // j2d1a2a...
    private static readonly Regex Dimensions = R(B + @"\d+\.?\d*[xх×]\d+\.?\d*" + B);
    private static readonly Regex SpacedColon = R(B + Sp + @"+\:" + Sp + "+");
    private static readonly Regex PunctThenWord = R(@"(\D[,\./])" + B);
    private static readonly Regex Whitespace = R(Sp + "+");

    private static readonly Regex WrappedInQuotes = R(@"^[""']([\s\S]+)[""']$");
    private static readonly Regex LeadingPunct = R(@"^['_,\-\:;]");
    private static readonly Regex TrailingPunct = R(@"['_,\-\:\-\+]$");
    private static readonly Regex DotWord = R(@"^\." + NotSp + "+$");

    private static readonly Regex AsciiRun = R(@"[\x00-\x7f]+");

    /// <summary><c>_text_preprocessing</c> for a single string.</summary>
    public static string Preprocess(string text, bool cleanCaption)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!cleanCaption) return PyString.Strip(PyString.Lower(text));
        return CleanCaption(CleanCaption(text));
    }

    /// <summary><c>_clean_caption</c>: one pass (the pipeline applies it twice).</summary>
    public static string CleanCaption(string caption)
    {
        caption = UnquotePlus(caption);
        caption = PyString.Lower(PyString.Strip(caption));
        caption = Person.Replace(caption, "person");
        caption = Url1.Replace(caption, "");
        caption = Url2.Replace(caption, "");
        caption = SoupText.GetText(caption);

        caption = Nickname.Replace(caption, "");
        foreach (var cjk in Cjk) caption = cjk.Replace(caption, "");

        caption = Dashes.Replace(caption, "-");
        caption = DoubleQuotes.Replace(caption, "\"");
        caption = SingleQuotes.Replace(caption, "'");
        caption = Quot.Replace(caption, "");
        caption = Amp.Replace(caption, "");
        caption = IpAddress.Replace(caption, " ");
        caption = ArticleId.Replace(caption, "");
        caption = LiteralNewline.Replace(caption, " ");
        caption = ShortHashId.Replace(caption, "");
        caption = LongHashId.Replace(caption, "");
        caption = LongNumber.Replace(caption, "");
        caption = FileName.Replace(caption, "");
        caption = RepeatedQuotes.Replace(caption, "\"");
        caption = RepeatedDots.Replace(caption, " ");
        caption = BadPunct.Replace(caption, " ");
        caption = LoneDot.Replace(caption, " ");

        // this-is-my-cute-cat / this_is_my_cute_cat
        if (DashOrUnderscore.Count(caption) > 3) caption = DashOrUnderscore.Replace(caption, " ");

        caption = Ftfy.FixText(caption);
        caption = PyHtml.Unescape(PyHtml.Unescape(caption));

        caption = Code1.Replace(caption, "");
        caption = Code2.Replace(caption, "");
        caption = Code3.Replace(caption, "");
        caption = Shipping.Replace(caption, "");
        caption = Download.Replace(caption, "");
        caption = ClickFor.Replace(caption, "");
        caption = Extension.Replace(caption, "");
        caption = Page.Replace(caption, "");
        caption = Code4.Replace(caption, " ");
        caption = Dimensions.Replace(caption, "");
        caption = SpacedColon.Replace(caption, ": ");
        caption = PunctThenWord.Replace(caption, "$1 ");
        caption = Whitespace.Replace(caption, " ");

        // Upstream calls caption.strip() here and discards the result, so no strip happens before the anchors below.
        caption = WrappedInQuotes.Replace(caption, "$1");
        caption = LeadingPunct.Replace(caption, "");
        caption = TrailingPunct.Replace(caption, "");
        caption = DotWord.Replace(caption, "");
        return PyString.Strip(caption);
    }

    /// <summary><c>urllib.parse.unquote_plus</c>: '+' to space, then %XX decoding of each ASCII run as UTF-8
    /// with U+FFFD for invalid bytes. Non-ASCII text splits runs, so escapes on either side never join.</summary>
    internal static string UnquotePlus(string s)
    {
        s = s.Replace('+', ' ');
        if (!s.Contains('%')) return s;
        var utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false);
        return AsciiRun.Replace(s, m =>
        {
            string run = m.Value;
            if (!run.Contains('%')) return run;
            var bytes = new List<byte>(run.Length);
            string[] bits = run.Split('%');
            foreach (char c in bits[0]) bytes.Add((byte)c);
            for (int i = 1; i < bits.Length; i++)
            {
                string item = bits[i];
                if (item.Length >= 2 && Uri.IsHexDigit(item[0]) && Uri.IsHexDigit(item[1]))
                {
                    bytes.Add(Convert.ToByte(item[..2], 16));
                    foreach (char c in item.AsSpan(2)) bytes.Add((byte)c);
                }
                else
                {
                    bytes.Add((byte)'%');
                    foreach (char c in item) bytes.Add((byte)c);
                }
            }
            return utf8.GetString(bytes.ToArray());
        });
    }
}
