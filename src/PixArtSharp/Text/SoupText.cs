using System.Text;
using System.Text.RegularExpressions;

namespace PixArtSharp.Text;

/// <summary>
/// <c>BeautifulSoup(markup, features="html.parser").text</c> (beautifulsoup4 4.11.2 on CPython's
/// <c>html.parser.HTMLParser</c> with <c>convert_charrefs=False</c>). Only what decides the text is kept: where tags,
/// comments and declarations begin and end, how bs4 turns character and entity references into data, which strings
/// <c>.text</c> keeps (plain strings and CDATA, not comments, doctypes, PIs, nor strings inside script, style,
/// template, rt and rp), and bs4's collapsing of whitespace-only strings.
/// </summary>
internal sealed partial class SoupText
{
    // Python's \s also matches U+001C–U+001F; use these inside character classes.
    private const string S = @"\s\x1c-\x1f";

    [GeneratedRegex("[&<]", RegexOptions.CultureInvariant)]
    private static partial Regex InterestingNormal();

    [GeneratedRegex(@"\G&[a-zA-Z#]", RegexOptions.CultureInvariant)]
    private static partial Regex Incomplete();

    [GeneratedRegex(@"\G&([a-zA-Z][-.a-zA-Z0-9]*)[^a-zA-Z0-9]", RegexOptions.CultureInvariant)]
    private static partial Regex EntityRef();

    [GeneratedRegex(@"\G&#(?:[0-9]+|[xX][0-9a-fA-F]+)[^0-9a-fA-F]", RegexOptions.CultureInvariant)]
    private static partial Regex CharRef();

    [GeneratedRegex("<[a-zA-Z]", RegexOptions.CultureInvariant)]
    private static partial Regex StartTagOpen();

    [GeneratedRegex(@"--[" + S + "]*>", RegexOptions.CultureInvariant)]
    private static partial Regex CommentClose();

    [GeneratedRegex(@"\G([a-zA-Z][^\t\n\r\f />\x00]*)(?:[" + S + @"]|/(?!>))*", RegexOptions.CultureInvariant)]
    private static partial Regex TagFindTolerant();

    [GeneratedRegex(@"\G((?<=['""" + S + @"/])[^" + S + @"/>][^" + S + @"/=>]*)([" + S + @"]*=+[" + S + @"]*('[^']*'|""[^""]*""|(?!['""])[^>" + S + @"]*))?(?:[" + S + @"]|/(?!>))*", RegexOptions.CultureInvariant)]
    private static partial Regex AttrFindTolerant();

    [GeneratedRegex(@"\G<[a-zA-Z][^\t\n\r\f />\x00]*(?:[" + S + @"/]*(?:(?<=['""" + S + @"/])[^" + S + @"/>][^" + S + @"/=>]*(?:[" + S + @"]*=+[" + S + @"]*(?:'[^']*'|""[^""]*""|(?!['""])[^>" + S + @"]*)[" + S + @"]*)?(?:[" + S + @"]|/(?!>))*)*)?[" + S + "]*", RegexOptions.CultureInvariant)]
    private static partial Regex LocateStartTagEndTolerant();

    [GeneratedRegex(@"\G</[" + S + "]*([a-zA-Z][-.a-zA-Z0-9:_]*)[" + S + "]*>", RegexOptions.CultureInvariant)]
    private static partial Regex EndTagFind();

    [GeneratedRegex(@"\G[a-zA-Z][-_.a-zA-Z0-9]*[" + S + "]*", RegexOptions.CultureInvariant)]
    private static partial Regex DeclName();

    [GeneratedRegex(@"][" + S + "]*][" + S + "]*>", RegexOptions.CultureInvariant)]
    private static partial Regex MarkedSectionClose();

    [GeneratedRegex(@"][" + S + "]*>", RegexOptions.CultureInvariant)]
    private static partial Regex MsMarkedSectionClose();

    private static readonly HashSet<string> VoidElements =
    [
        "area", "base", "basefont", "bgsound", "br", "col", "command", "embed", "frame", "hr", "image", "img", "input",
        "isindex", "keygen", "link", "menuitem", "meta", "nextid", "param", "source", "spacer", "track", "wbr",
    ];

    // bs4 HTMLTreeBuilder.DEFAULT_STRING_CONTAINERS: strings inside these get a subclass that .text skips.
    private static readonly HashSet<string> StringContainers = ["rt", "rp", "style", "script", "template"];

    private static readonly HashSet<string> PreserveWhitespace = ["pre", "textarea"];

    private static readonly Dictionary<string, string> EntityToCharacter = BuildEntityToCharacter();

    private enum StringKind { Navigable, CData, Excluded }

    private sealed record OpenTag(string Name);

    // HTMLParser state.
    private string _raw = "";
    private string? _cdataElem;
    private Regex _interesting = InterestingNormal();

    // BeautifulSoupHTMLParser / BeautifulSoup state.
    private readonly List<string> _alreadyClosedEmpty = [];
    private readonly List<OpenTag> _tagStack = [];
    private readonly Dictionary<string, int> _openCounter = new(StringComparer.Ordinal);
    private readonly List<OpenTag> _preserveStack = [];
    private readonly List<OpenTag> _containerStack = [];
    private readonly StringBuilder _currentData = new();
    private bool _hasCurrentData;
    private readonly StringBuilder _text = new();

    public static string GetText(string markup)
    {
        var soup = new SoupText();
        soup._raw = markup;
        soup.GoAhead(end: false);
        soup.GoAhead(end: true);
        soup.EndData(StringKind.Navigable);
        return soup._text.ToString();
    }

    // ---- html.parser.HTMLParser.goahead ----

    private void GoAhead(bool end)
    {
        string raw = _raw;
        int i = 0, n = raw.Length;
        while (i < n)
        {
            int j;
            var match = _interesting.Match(raw, i);
            if (match.Success) j = match.Index;
            else
            {
                if (_cdataElem != null) break;
                j = n;
            }
            if (i < j) HandleData(raw[i..j]);
            i = j;
            if (i == n) break;

            if (raw[i] == '<')
            {
                int k;
                if (StartTagOpen().IsMatch(raw.AsSpan(i, Math.Min(2, n - i)))) k = ParseStartTag(i);
                else if (StartsWith(raw, "</", i)) k = ParseEndTag(i);
                else if (StartsWith(raw, "<!--", i)) k = ParseComment(i);
                else if (StartsWith(raw, "<?", i)) k = ParsePi(i);
                else if (StartsWith(raw, "<!", i)) k = ParseHtmlDeclaration(i);
                else if (i + 1 < n)
                {
                    HandleData("<");
                    k = i + 1;
                }
                else break;

                if (k < 0)
                {
                    if (!end) break;
                    k = raw.IndexOf('>', i + 1);
                    if (k < 0)
                    {
                        k = raw.IndexOf('<', i + 1);
                        if (k < 0) k = i + 1;
                    }
                    else k += 1;
                    HandleData(raw[i..k]);
                }
                i = k;
            }
            else if (StartsWith(raw, "&#", i))
            {
                var m = CharRef().Match(raw, i);
                if (m.Success)
                {
                    HandleCharRef(m.Value[2..^1]);
                    int k = m.Index + m.Length;
                    if (raw[k - 1] != ';') k--;
                    i = k;
                    continue;
                }
                if (raw.IndexOf(';', i) >= 0)
                {
                    // "bail by consuming &#"
                    HandleData(raw.Substring(i, 2));
                    i += 2;
                }
                break;
            }
            else if (raw[i] == '&')
            {
                var m = EntityRef().Match(raw, i);
                if (m.Success)
                {
                    HandleEntityRef(m.Groups[1].Value);
                    int k = m.Index + m.Length;
                    if (raw[k - 1] != ';') k--;
                    i = k;
                    continue;
                }
                var inc = Incomplete().Match(raw, i);
                if (inc.Success)
                {
                    if (end && inc.Length == n - i) i += 1;
                    break;
                }
                if (i + 1 < n)
                {
                    HandleData("&");
                    i += 1;
                }
                else break;
            }
            else throw new InvalidOperationException("interesting.search() lied");
        }
        if (end && i < n && _cdataElem == null)
        {
            HandleData(raw[i..n]);
            i = n;
        }
        _raw = raw[i..];
    }

    private static bool StartsWith(string s, string prefix, int at) =>
        string.CompareOrdinal(s, at, prefix, 0, prefix.Length) == 0 && at + prefix.Length <= s.Length;

    private int ParseHtmlDeclaration(int i)
    {
        if (StartsWith(_raw, "<!--", i)) return ParseComment(i);
        if (StartsWith(_raw, "<![", i)) return ParseMarkedSection(i);
        if (_raw.Length >= i + 9 && PyString.Lower(_raw.Substring(i, 9)) == "<!doctype")
        {
            int gt = _raw.IndexOf('>', i + 9);
            if (gt == -1) return -1;
            EndData(StringKind.Navigable); // handle_decl: a Doctype string, which .text skips
            return gt + 1;
        }
        return ParseBogusComment(i);
    }

    private int ParseBogusComment(int i)
    {
        int pos = _raw.IndexOf('>', i + 2);
        if (pos == -1) return -1;
        HandleSkippedString();
        return pos + 1;
    }

    private int ParsePi(int i)
    {
        int j = _raw.IndexOf('>', i + 2);
        if (j < 0) return -1;
        HandleSkippedString();
        return j + 1;
    }

    // _markupbase.ParserBase.parse_comment
    private int ParseComment(int i)
    {
        var m = CommentClose().Match(_raw, i + 4);
        if (!m.Success) return -1;
        HandleSkippedString();
        return m.Index + m.Length;
    }

    // _markupbase.ParserBase.parse_marked_section
    private int ParseMarkedSection(int i)
    {
        var (name, j) = ScanName(i + 3, i);
        if (j < 0) return j;
        Match m;
        if (name is "temp" or "cdata" or "ignore" or "include" or "rcdata") m = MarkedSectionClose().Match(_raw, i + 3);
        else if (name is "if" or "else" or "endif") m = MsMarkedSectionClose().Match(_raw, i + 3);
        else throw new FormatException($"unknown status keyword '{_raw[(i + 3)..j]}' in marked section (Python's html.parser raises here too)");
        if (!m.Success) return -1;
        UnknownDecl(_raw[(i + 3)..m.Index]);
        return m.Index + m.Length;
    }

    private (string? Name, int End) ScanName(int i, int declStart)
    {
        int n = _raw.Length;
        if (i == n) return (null, -1);
        var m = DeclName().Match(_raw, i);
        if (m.Success)
        {
            if (i + m.Length == n) return (null, -1);
            return (PyString.Lower(PyString.Strip(m.Value)), m.Index + m.Length);
        }
        string context = _raw.Substring(declStart, Math.Min(20, n - declStart));
        throw new FormatException($"expected name token at '{context}' (Python's html.parser raises here too)");
    }

    private int ParseStartTag(int i)
    {
        int endPos = CheckForWholeStartTag(i);
        if (endPos < 0) return endPos;
        var tagMatch = TagFindTolerant().Match(_raw, i + 1);
        int k = tagMatch.Index + tagMatch.Length;
        string tag = PyString.Lower(tagMatch.Groups[1].Value);
        while (k < endPos)
        {
            var m = AttrFindTolerant().Match(_raw, k);
            if (!m.Success) break;
            k = m.Index + m.Length;
        }
        string endText = PyString.Strip(_raw[k..endPos]);
        if (endText is not (">" or "/>"))
        {
            HandleData(_raw[i..endPos]);
            return endPos;
        }
        if (endText.EndsWith("/>", StringComparison.Ordinal))
        {
            // BeautifulSoupHTMLParser.handle_startendtag
            SoupStartTag(tag, handleEmptyElement: false);
            SoupParserEndTag(tag, checkAlreadyClosed: true);
        }
        else
        {
            SoupStartTag(tag, handleEmptyElement: true);
            if (tag is "script" or "style")
            {
                _cdataElem = tag;
                _interesting = new Regex(@"</[" + S + "]*" + Regex.Escape(tag) + "[" + S + "]*>",
                    RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
            }
        }
        return endPos;
    }

    private int CheckForWholeStartTag(int i)
    {
        var m = LocateStartTagEndTolerant().Match(_raw, i);
        int j = m.Index + m.Length;
        if (j >= _raw.Length) return -1;
        char next = _raw[j];
        if (next == '>') return j + 1;
        if (next == '/')
        {
            if (StartsWith(_raw, "/>", j)) return j + 2;
            return -1; // rawdata.startswith("/", j) always holds here
        }
        if (next is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or '=' or '/') return -1;
        return j > i ? j : i + 1;
    }

    private int ParseEndTag(int i)
    {
        int gt = _raw.IndexOf('>', i + 1);
        if (gt < 0) return -1;
        int gtPos = gt + 1;
        var m = EndTagFind().Match(_raw, i);
        if (!m.Success)
        {
            if (_cdataElem != null)
            {
                HandleData(_raw[i..gtPos]);
                return gtPos;
            }
            var nameMatch = TagFindTolerant().Match(_raw, i + 2);
            if (!nameMatch.Success)
            {
                if (StartsWith(_raw, "</>", i)) return i + 3;
                return ParseBogusComment(i);
            }
            string tagName = PyString.Lower(nameMatch.Groups[1].Value);
            gtPos = _raw.IndexOf('>', nameMatch.Index + nameMatch.Length);
            SoupParserEndTag(tagName, checkAlreadyClosed: true);
            return gtPos + 1;
        }
        string elem = PyString.Lower(m.Groups[1].Value);
        if (_cdataElem != null && elem != _cdataElem)
        {
            HandleData(_raw[i..gtPos]);
            return gtPos;
        }
        SoupParserEndTag(elem, checkAlreadyClosed: true);
        _interesting = InterestingNormal();
        _cdataElem = null;
        return gtPos;
    }

    // ---- bs4 BeautifulSoupHTMLParser ----

    private void HandleCharRef(string name)
    {
        long realName = name[0] is 'x' or 'X'
            ? PyHtml.ParseBounded(name.TrimStart(name[0]), hex: true)
            : PyHtml.ParseBounded(name, hex: false);
        string? data = null;
        // bs4 reads &#128;–&#159; as Windows-1252 bytes (original_encoding is None for str markup).
        if (realName < 256) data = PyHtml.DecodeWindows1252((int)realName);
        if (string.IsNullOrEmpty(data))
        {
            if (realName <= 0x10FFFF)
                data = realName is >= 0xD800 and <= 0xDFFF ? ((char)realName).ToString() : char.ConvertFromUtf32((int)realName);
        }
        HandleData(string.IsNullOrEmpty(data) ? "\ufffd" : data);
    }

    private void HandleEntityRef(string name) =>
        HandleData(EntityToCharacter.TryGetValue(name, out var ch) ? ch : "&" + name);

    // Comments, doctypes, other declarations and processing instructions become strings .text skips; what matters
    // is that they end the current string first.
    private void HandleSkippedString() => EndData(StringKind.Navigable);

    private void UnknownDecl(string data)
    {
        bool cdata = data.Length >= 6 && string.Equals(data[..6], "CDATA[", StringComparison.OrdinalIgnoreCase);
        EndData(StringKind.Navigable);
        if (!cdata) return;
        HandleData(data[6..]);
        EndData(StringKind.CData);
    }

    private void SoupStartTag(string name, bool handleEmptyElement)
    {
        EndData(StringKind.Navigable);
        var tag = new OpenTag(name);
        _tagStack.Add(tag);
        _openCounter[name] = _openCounter.GetValueOrDefault(name) + 1;
        if (PreserveWhitespace.Contains(name)) _preserveStack.Add(tag);
        if (StringContainers.Contains(name)) _containerStack.Add(tag);
        if (VoidElements.Contains(name) && handleEmptyElement)
        {
            SoupParserEndTag(name, checkAlreadyClosed: false);
            _alreadyClosedEmpty.Add(name);
        }
    }

    private void SoupParserEndTag(string name, bool checkAlreadyClosed)
    {
        if (checkAlreadyClosed && _alreadyClosedEmpty.Remove(name)) return;
        EndData(StringKind.Navigable);
        PopToTag(name);
    }

    private void PopToTag(string name)
    {
        for (int i = _tagStack.Count - 1; i >= 0; i--)
        {
            if (_openCounter.GetValueOrDefault(name) == 0) break;
            var t = _tagStack[i];
            PopTag();
            if (t.Name == name) break;
        }
    }

    private void PopTag()
    {
        var tag = _tagStack[^1];
        _tagStack.RemoveAt(_tagStack.Count - 1);
        _openCounter[tag.Name]--;
        if (_preserveStack.Count > 0 && ReferenceEquals(_preserveStack[^1], tag)) _preserveStack.RemoveAt(_preserveStack.Count - 1);
        if (_containerStack.Count > 0 && ReferenceEquals(_containerStack[^1], tag)) _containerStack.RemoveAt(_containerStack.Count - 1);
    }

    private void HandleData(string data)
    {
        _currentData.Append(data);
        _hasCurrentData = true;
    }

    // BeautifulSoup.endData
    private void EndData(StringKind kind)
    {
        if (!_hasCurrentData) return;
        string data = _currentData.ToString();
        _currentData.Clear();
        _hasCurrentData = false;
        if (_preserveStack.Count == 0 && data.All(c => c is ' ' or '\n' or '\t' or '\f' or '\r'))
            data = data.Contains('\n') ? "\n" : " ";
        if (kind == StringKind.Navigable && _containerStack.Count > 0) return;
        _text.Append(data);
    }

    // bs4 EntitySubstitution.HTML_ENTITY_TO_CHARACTER: html5 names without their semicolon.
    private static Dictionary<string, string> BuildEntityToCharacter()
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, value) in HtmlEntities.Html5.OrderBy(p => p.Key, StringComparer.Ordinal))
            d.TryAdd(name.EndsWith(';') ? name[..^1] : name, value);
        return d;
    }
}
