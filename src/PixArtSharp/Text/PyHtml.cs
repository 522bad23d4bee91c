using System.Globalization;
using System.Text.RegularExpressions;

namespace PixArtSharp.Text;

/// <summary>
/// CPython's <c>html.unescape</c>. .NET's <c>WebUtility.HtmlDecode</c> knows only the HTML 4 entities, needs the
/// semicolon and does not apply the HTML5 numeric-reference rules, so it gives different text.
/// </summary>
internal static partial class PyHtml
{
    // C1 code points that HTML5 reads as Windows-1252; bytes 81, 8D, 8F, 90 and 9D stay as C1 controls.
    internal const string Windows1252C1 =
        "\u20ac\u0081\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u008d\u017d\u008f" +
        "\u0090\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u009d\u017e\u0178";

    [GeneratedRegex(@"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)", RegexOptions.CultureInvariant)]
    private static partial Regex CharRef();

    public static string Unescape(string s)
    {
        if (!s.Contains('&')) return s;
        return CharRef().Replace(s, m => ReplaceCharRef(m.Groups[1].Value));
    }

    private static string ReplaceCharRef(string s)
    {
        if (s[0] == '#')
        {
            bool hex = s[1] is 'x' or 'X';
            string digits = (hex ? s[2..] : s[1..]).TrimEnd(';');
            // int() has no upper bound in Python; anything past 0x10FFFF takes the same branch below.
            long num = ParseBounded(digits, hex);
            if (num == 0x00) return "\ufffd";
            if (num == 0x0d) return "\r";
            if (num is >= 0x80 and <= 0x9f) return Windows1252C1[(int)num - 0x80].ToString();
            if (num is >= 0xD800 and <= 0xDFFF || num > 0x10FFFF) return "\ufffd";
            if (IsInvalidCodepoint(num)) return "";
            return char.ConvertFromUtf32((int)num);
        }
        if (HtmlEntities.Html5.TryGetValue(s, out var value)) return value;
        // The longest entity name that prefixes s wins (legacy names such as "&ampfoo" without a semicolon).
        for (int x = s.Length - 1; x > 1; x--)
        {
            if (HtmlEntities.Html5.TryGetValue(s[..x], out value)) return value + s[x..];
        }
        return "&" + s;
    }

    internal static long ParseBounded(string digits, bool hex)
    {
        long num = 0;
        foreach (char c in digits)
        {
            int d = hex ? int.Parse(c.ToString(), NumberStyles.HexNumber, CultureInfo.InvariantCulture) : c - '0';
            num = num * (hex ? 16 : 10) + d;
            if (num > 0x10FFFF) return 0x110000;
        }
        return num;
    }

    private static bool IsInvalidCodepoint(long n) =>
        n is >= 0x1 and <= 0x8 or 0xb or >= 0xe and <= 0x1f or >= 0x7f and <= 0x9f or >= 0xfdd0 and <= 0xfdef
        || (n & 0xfffe) == 0xfffe;

    /// <summary><c>bytes.decode("windows-1252")</c> of one byte, or null where CPython's codec has no mapping.</summary>
    internal static string? DecodeWindows1252(int b)
    {
        if (b is < 0x80 or > 0x9f) return ((char)b).ToString();
        char c = Windows1252C1[b - 0x80];
        return c < 0xa0 ? null : c.ToString();
    }
}
