using System.Text.Json;
using PixArtSharp.Tests.Support;

namespace PixArtSharp.Tests.Text;

/// <summary>tokenizer/cases.json: 43 prompts, each preprocessed with clean_caption false and true.</summary>
public static class TokenizerCases
{
    public sealed record Expected(string Prompt, string Text, long[] InputIds, long[] AttentionMask, int NumTokens,
        int UntruncatedNumTokens, bool Truncated, string[] Pieces);

    private static readonly Lazy<Dictionary<(string Id, bool Clean), Expected>> _all = new(Load);

    public static string SpiecePath => Fixtures.Path("tokenizer", "spiece.model");

    public static Expected Get(string id, bool clean) => _all.Value[(id, clean)];

    /// <summary>(case id, clean_caption) for every case, so each is reported as its own test.</summary>
    public static IEnumerable<object[]> All() =>
        _all.Value.Keys.OrderBy(k => k.Clean).Select(k => new object[] { k.Id, k.Clean });

    private static Dictionary<(string, bool), Expected> Load()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("tokenizer", "cases.json")));
        var result = new Dictionary<(string, bool), Expected>();
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
        {
            string id = c.GetProperty("id").GetString()!;
            string prompt = c.GetProperty("prompt").GetString()!;
            foreach (bool clean in new[] { false, true })
            {
                var e = c.GetProperty(clean ? "clean_caption_true" : "clean_caption_false");
                result[(id, clean)] = new Expected(
                    prompt,
                    e.GetProperty("text").GetString()!,
                    e.GetProperty("input_ids").EnumerateArray().Select(x => x.GetInt64()).ToArray(),
                    e.GetProperty("attention_mask").EnumerateArray().Select(x => x.GetInt64()).ToArray(),
                    e.GetProperty("num_tokens").GetInt32(),
                    e.GetProperty("untruncated_num_tokens").GetInt32(),
                    e.GetProperty("truncated").GetBoolean(),
                    e.GetProperty("pieces").EnumerateArray().Select(x => x.GetString()!).ToArray());
            }
        }
        if (result.Count != 86) throw new InvalidDataException($"cases.json: expected 43 cases × 2 modes, found {result.Count}.");
        return result;
    }
}
