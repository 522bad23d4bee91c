using System.Globalization;
using System.Text;

namespace PixArtSharp.Text;

/// <summary>
/// Python <c>str</c> methods whose .NET look-alikes differ: <c>str.isspace</c> also counts U+001C–U+001F (which
/// <see cref="char.IsWhiteSpace(char)"/> does not), and <c>str.lower</c> applies the full (special-casing) mappings,
/// including final sigma, where <see cref="string.ToLowerInvariant"/> maps one UTF-16 unit at a time.
/// </summary>
internal static class PyString
{
    /// <summary>Python's <c>Py_UNICODE_ISSPACE</c>: bidi class WS/B/S or category Zs.</summary>
    public static bool IsSpace(char c) => c switch
    {
        >= '\t' and <= '\r' => true,
        >= '\u001c' and <= '\u001f' => true,
        ' ' or '\u0085' or '\u00a0' or '\u1680' => true,
        >= '\u2000' and <= '\u200a' => true,
        '\u2028' or '\u2029' or '\u202f' or '\u205f' or '\u3000' => true,
        _ => false,
    };

    public static string Strip(string s)
    {
        int start = 0, end = s.Length;
        while (start < end && IsSpace(s[start])) start++;
        while (end > start && IsSpace(s[end - 1])) end--;
        return s.Substring(start, end - start);
    }

    public static string RStrip(string s)
    {
        int end = s.Length;
        while (end > 0 && IsSpace(s[end - 1])) end--;
        return s[..end];
    }

    public static string LStrip(string s)
    {
        int start = 0;
        while (start < s.Length && IsSpace(s[start])) start++;
        return s[start..];
    }

    /// <summary><c>str.lower()</c>: full lowercase mapping per code point (CPython <c>lower_ucs4</c>).</summary>
    public static string Lower(string s)
    {
        bool ascii = true;
        foreach (char c in s)
        {
            if (c >= 0x80) { ascii = false; break; }
        }
        if (ascii) return s.ToLowerInvariant();

        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            // U+0130 is the only code point whose unconditional full lowercase mapping has two code points.
            if (c == '\u0130') { sb.Append("i\u0307"); continue; }
            // Final_Sigma: CPython lowercases Σ to ς when it ends a word (handle_capital_sigma).
            if (c == '\u03a3') { sb.Append(IsFinalSigma(s, i) ? '\u03c2' : '\u03c3'); continue; }
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                sb.Append(s.AsSpan(i, 2).ToString().ToLowerInvariant());
                i++;
                continue;
            }
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }

    // Port of CPython unicodeobject.c handle_capital_sigma: preceded by a cased letter (skipping case-ignorable
    // characters) and not followed by one.
    private static bool IsFinalSigma(string s, int i)
    {
        int j = i - 1;
        while (j >= 0 && IsCaseIgnorable(s[j])) j--;
        bool before = j >= 0 && IsCased(s[j]);
        if (!before) return false;
        j = i + 1;
        while (j < s.Length && IsCaseIgnorable(s[j])) j++;
        bool after = j < s.Length && IsCased(s[j]);
        return !after;
    }

    private static bool IsCased(char c)
    {
        var cat = CharUnicodeInfo.GetUnicodeCategory(c);
        return cat is UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter;
    }

    private static bool IsCaseIgnorable(char c)
    {
        var cat = CharUnicodeInfo.GetUnicodeCategory(c);
        return cat is UnicodeCategory.NonSpacingMark or UnicodeCategory.EnclosingMark or UnicodeCategory.Format
            or UnicodeCategory.ModifierLetter or UnicodeCategory.ModifierSymbol
            || c is '\'' or '.' or ':' or '^' or '`' or '\u00ad' or '\u00b7' or '\u2018' or '\u2019' or '\u2024' or '\u2027';
    }
}
