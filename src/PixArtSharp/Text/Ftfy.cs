using System.Text;
using System.Text.RegularExpressions;

namespace PixArtSharp.Text;

/// <summary>
/// <c>ftfy.fix_text(text)</c> with ftfy 6.2's default <c>TextFixerConfig</c>: unescape_html="auto", fix_c1_controls,
/// fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks, fix_surrogates, remove_terminal_escapes,
/// remove_control_chars, then NFC.
/// </summary>
/// <remarks>
/// Not ported: fix_encoding, ftfy's mojibake repair (badness heuristic, re-decoding through ten single-byte codecs,
/// restore_byte_a0, replace_lossy_sequences, decode_inconsistent_utf8). It only changes text that its heuristic
/// flags as mojibake and that then re-decodes as UTF-8, e.g. "cafÃ©" → "café"; such prompts keep their mojibake
/// here. Everything else fix_text does is here.
/// </remarks>
internal static partial class Ftfy
{
    [GeneratedRegex("&#?[0-9A-Za-z]{1,24};", RegexOptions.CultureInvariant)]
    private static partial Regex HtmlEntity();

    // fixes.ANSI_RE = "\033\\[((?:\\d|;)*)([a-zA-Z])"; \d is Unicode Nd in both engines.
    [GeneratedRegex(@"\x1b\[((?:\d|;)*)([a-zA-Z])", RegexOptions.CultureInvariant)]
    private static partial Regex Ansi();

    [GeneratedRegex("[\u02bc\u2018-\u201b]", RegexOptions.CultureInvariant)]
    private static partial Regex SingleQuote();

    [GeneratedRegex("[\u201c-\u201f]", RegexOptions.CultureInvariant)]
    private static partial Regex DoubleQuote();

    public static string FixText(string text)
    {
        bool unescapeHtml = true;
        var output = new StringBuilder(text.Length);
        int pos = 0;
        while (pos < text.Length)
        {
            int textBreak = text.IndexOf('\n', pos) + 1;
            if (textBreak == 0) textBreak = text.Length;
            string segment = text[pos..textBreak];
            // "auto" turns into False for this and every later segment once a '<' has been seen.
            if (unescapeHtml && segment.Contains('<')) unescapeHtml = false;
            output.Append(FixSegment(segment, unescapeHtml));
            pos = textBreak;
        }
        return output.ToString();
    }

    // fix_and_explain: apply every fixer until the text stops changing.
    private static string FixSegment(string text, bool unescapeHtml)
    {
        while (true)
        {
            string orig = text;
            if (unescapeHtml) text = UnescapeHtml(text);
            // (fix_encoding would run here; see remarks.)
            text = FixC1Controls(text);
            text = FixLatinLigatures(text);
            text = FixCharacterWidth(text);
            text = UncurlQuotes(text);
            text = FixLineBreaks(text);
            text = FixSurrogates(text);
            text = Ansi().Replace(text, "");
            text = RemoveControlChars(text);
            text = NormalizeNfc(text);
            if (text == orig) return text;
        }
    }

    // .NET refuses to normalize strings holding noncharacters such as U+FFFE (CPython does not). They have
    // canonical combining class 0 and never compose, so normalizing the runs between them gives CPython's result.
    internal static string NormalizeNfc(string text)
    {
        try
        {
            return text.Normalize(NormalizationForm.FormC);
        }
        catch (ArgumentException)
        {
            var sb = new StringBuilder(text.Length);
            int start = 0;
            for (int i = 0; i <= text.Length; i++)
            {
                if (i < text.Length && !IsNoncharacterAt(text, i)) continue;
                if (i > start) sb.Append(text[start..i].Normalize(NormalizationForm.FormC));
                if (i < text.Length)
                {
                    int len = char.IsHighSurrogate(text[i]) ? 2 : 1;
                    sb.Append(text, i, len);
                    i += len - 1;
                    start = i + 1;
                }
            }
            return sb.ToString();
        }
    }

    private static bool IsNoncharacterAt(string s, int i)
    {
        int cp = char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])
            ? char.ConvertToUtf32(s[i], s[i + 1])
            : s[i];
        return cp is >= 0xfdd0 and <= 0xfdef || (cp & 0xfffe) == 0xfffe;
    }

    internal static string UnescapeHtml(string text) => HtmlEntity().Replace(text, m =>
    {
        string s = m.Value;
        if (s[^1] == ';' && (HtmlEntities.Html5.TryGetValue(s[1..], out var v) || HtmlEntities.FtfyUppercase.TryGetValue(s, out v)))
            return v;
        if (s.StartsWith("&#", StringComparison.Ordinal))
        {
            string unescaped = PyHtml.Unescape(s);
            // Only a reference html.unescape consumed whole, semicolon included, counts.
            return unescaped.Contains(';') ? s : unescaped;
        }
        return s;
    });

    // fixes._c1_fixer: a C1 control read as its sloppy-windows-1252 byte (undefined bytes stay as they are).
    internal static string FixC1Controls(string text)
    {
        int i = 0;
        while (i < text.Length && text[i] is < '\u0080' or > '\u009f') i++;
        if (i == text.Length) return text;
        var sb = new StringBuilder(text);
        for (; i < sb.Length; i++)
            if (sb[i] is >= '\u0080' and <= '\u009f') sb[i] = PyHtml.Windows1252C1[sb[i] - 0x80];
        return sb.ToString();
    }

    private static string FixLatinLigatures(string text)
    {
        if (!text.Any(c => c is >= '\u0132' and <= '\u01f3' or >= '\ufb00' and <= '\ufb06')) return text;
        var sb = new StringBuilder(text.Length + 8);
        foreach (char c in text)
        {
            sb.Append(c switch
            {
                'Ĳ' => "IJ",
                'ĳ' => "ij",
                'ŉ' => "ʼn",
                'Ǳ' => "DZ",
                'ǲ' => "Dz",
                'ǳ' => "dz",
                'Ǆ' => "DŽ",
                'ǅ' => "Dž",
                'ǆ' => "dž",
                'Ǉ' => "LJ",
                'ǈ' => "Lj",
                'ǉ' => "lj",
                'Ǌ' => "NJ",
                'ǋ' => "Nj",
                'ǌ' => "nj",
                'ﬀ' => "ff",
                'ﬁ' => "fi",
                'ﬂ' => "fl",
                'ﬃ' => "ffi",
                'ﬄ' => "ffl",
                'ﬅ' => "ſt",
                'ﬆ' => "st",
                _ => c.ToString(),
            });
        }
        return sb.ToString();
    }

    // chardata.WIDTH_MAP: U+3000 → space, and U+FF01–U+FFEF → their NFKC form where that differs.
    private static string FixCharacterWidth(string text)
    {
        if (!text.Any(c => c == '\u3000' || c is >= '\uff01' and <= '\uffef')) return text;
        var sb = new StringBuilder(text.Length);
        foreach (char c in text)
        {
            if (c == '\u3000') sb.Append(' ');
            else if (c is >= '\uff01' and <= '\uffef') sb.Append(c.ToString().Normalize(NormalizationForm.FormKC));
            else sb.Append(c);
        }
        return sb.ToString();
    }

    private static string UncurlQuotes(string text) => SingleQuote().Replace(DoubleQuote().Replace(text, "\""), "'");

    private static string FixLineBreaks(string text) => text
        .Replace("\r\n", "\n").Replace('\r', '\n').Replace('\u2028', '\n').Replace('\u2029', '\n').Replace('\u0085', '\n');

    // Paired surrogates already form one code point in UTF-16; only lone ones remain to replace.
    private static string FixSurrogates(string text)
    {
        StringBuilder? sb = null;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            bool lone = char.IsHighSurrogate(c) ? !(i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
                : char.IsLowSurrogate(c) && !(i > 0 && char.IsHighSurrogate(text[i - 1]));
            if (lone)
            {
                sb ??= new StringBuilder(text);
                sb[i] = '\ufffd';
            }
        }
        return sb?.ToString() ?? text;
    }

    // chardata.CONTROL_CHARS
    private static string RemoveControlChars(string text)
    {
        static bool Drop(char c) => c is <= '\u0008' or '\u000b' or >= '\u000e' and <= '\u001f' or '\u007f'
            or >= '\u206a' and <= '\u206f' or '\ufeff' or >= '\ufff9' and <= '\ufffc';
        if (!text.Any(Drop)) return text;
        var sb = new StringBuilder(text.Length);
        foreach (char c in text)
            if (!Drop(c)) sb.Append(c);
        return sb.ToString();
    }
}
