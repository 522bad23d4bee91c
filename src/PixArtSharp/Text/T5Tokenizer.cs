using Microsoft.ML.Tokenizers;
using PixArtSharp.Loading;

namespace PixArtSharp.Text;

/// <summary>
/// The slow transformers <c>T5Tokenizer</c> (legacy=True, 100 extra ids) as PixArt's <c>encode_prompt</c> calls it:
/// <c>tokenizer(text, padding="max_length", max_length=120, truncation=True, add_special_tokens=True)</c>.
/// Microsoft.ML.Tokenizers loads the model and normalizes; this class adds what that library does differently.
/// </summary>
internal sealed class T5Tokenizer
{
    public const int PadId = 0;
    public const int EosId = 1;
    public const int UnkId = 2;
    public const int ExtraIds = 100;
    public const int DefaultMaxLength = 120;

    private readonly SentencePieceTokenizer _sp;
    private readonly UnigramViterbi _viterbi;
    private readonly string[] _pieces;
    private readonly Dictionary<string, int> _specialIds = new(StringComparer.Ordinal);

    /// <exception cref="ModelNotFoundException">The file is not there.</exception>
    /// <exception cref="WeightFileException">It is not a readable regular file, or not a SentencePiece model (named in the message).</exception>
    public T5Tokenizer(string spieceModelPath)
    {
        byte[] model = ModelFiles.ReadAllBytes(spieceModelPath, "tokenizer model");
        try
        {
            using var stream = new MemoryStream(WithBosId0(model), writable: false);
            _sp = SentencePieceTokenizer.Create(stream, addBeginningOfSentence: false, addEndOfSentence: false);
            _viterbi = new UnigramViterbi(model);
            if (_sp.Vocabulary.Count < 3)
                throw new InvalidDataException($"it has {_sp.Vocabulary.Count} pieces; T5's has 32000");
        }
        catch (Exception e) when (e is not (OutOfMemoryException or WeightFileException))
        {
            throw new WeightFileException($"The tokenizer model {spieceModelPath} is not a valid SentencePiece model ({e.Message}). Download the model again.", e);
        }

        int size = _sp.Vocabulary.Count;
        _pieces = new string[size + ExtraIds];
        foreach (var (piece, id) in _sp.Vocabulary)
            if (id >= 0 && id < size) _pieces[id] = piece;

        _specialIds["<pad>"] = PadId;
        _specialIds["</s>"] = EosId;
        _specialIds["<unk>"] = UnkId;
        for (int n = 0; n < ExtraIds; n++)
        {
            int id = size + ExtraIds - 1 - n;
            _pieces[id] = $"<extra_id_{n}>";
            _specialIds[_pieces[id]] = id;
        }
    }

    /// <summary>Loads <c>spiece.model</c> from a pipeline's <c>tokenizer/</c> folder.</summary>
    public static T5Tokenizer FromModelFolder(string tokenizerDir) => new(Path.Combine(tokenizerDir, "spiece.model"));

    /// <summary>Vocabulary size including the extra ids (32100 for T5), i.e. <c>len(tokenizer)</c>.</summary>
    public int Count => _pieces.Length;

    public string IdToPiece(int id) => _pieces[id];

    public IReadOnlyList<string> Pieces(IEnumerable<int> ids) => ids.Select(IdToPiece).ToList();

    /// <summary>Untruncated ids with the final <c>&lt;/s&gt;</c>: <c>tokenizer(text).input_ids</c>.</summary>
    public IReadOnlyList<int> EncodeToIds(string text)
    {
        var ids = new List<int>();
        foreach (var (segment, specialId) in Split(text))
        {
            if (specialId >= 0) ids.Add(specialId);
            else AppendSentencePiece(segment, ids);
        }
        ids.Add(EosId);
        return ids;
    }

    public TokenizedBatch Encode(IReadOnlyList<string> texts, int maxLength = DefaultMaxLength)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 1);
        var ids = new long[texts.Count * maxLength];
        var mask = new long[texts.Count * maxLength];
        var counts = new int[texts.Count];
        for (int b = 0; b < texts.Count; b++)
        {
            var row = EncodeToIds(texts[b]);
            counts[b] = row.Count;
            // transformers truncates the sequence before adding </s>, so </s> always survives truncation.
            int keep = Math.Min(row.Count - 1, maxLength - 1);
            int o = b * maxLength;
            for (int i = 0; i < keep; i++) { ids[o + i] = row[i]; mask[o + i] = 1; }
            ids[o + keep] = EosId;
            mask[o + keep] = 1;
        }
        return new TokenizedBatch(ids, mask, texts.Count, maxLength, counts);
    }

    // PreTrainedTokenizer.tokenize: split on added tokens (no-split trie), apply their lstrip/rstrip to the
    // neighbouring text, and drop text that becomes empty. Only the extra ids have lstrip=rstrip=True in T5's config;
    // <pad>, </s> and <unk> strip nothing, so "a </s>b" keeps "a " and "b" as separate SentencePiece inputs.
    private List<(string Text, int SpecialId)> Split(string text)
    {
        var parts = new List<(string Text, int SpecialId)>();
        int start = 0;
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] != '<') continue;
            int close = text.IndexOf('>', i + 1);
            if (close < 0) break;
            // Added tokens contain no '<' after the first character, so the shortest candidate is the only one.
            int nextOpen = text.IndexOf('<', i + 1, close - i);
            if (nextOpen >= 0) continue;
            if (!_specialIds.TryGetValue(text.Substring(i, close - i + 1), out int id)) continue;
            parts.Add((text[start..i], -1));
            parts.Add((text.Substring(i, close - i + 1), id));
            start = close + 1;
            i = close;
        }
        parts.Add((text[start..], -1));

        for (int i = 0; i < parts.Count; i++)
        {
            if (parts[i].SpecialId < ExtraIdFloor) continue;
            if (i + 1 < parts.Count && parts[i + 1].SpecialId < 0) parts[i + 1] = (PyString.LStrip(parts[i + 1].Text), -1);
            if (i > 0 && parts[i - 1].SpecialId < 0) parts[i - 1] = (PyString.RStrip(parts[i - 1].Text), -1);
        }
        parts.RemoveAll(p => p.SpecialId < 0 && p.Text.Length == 0);
        return parts;
    }

    private int ExtraIdFloor => _pieces.Length - ExtraIds;

    // Microsoft.ML.Tokenizers does the normalization (precompiled nmt_nfkc map, whitespace, dummy prefix); the
    // segmentation is SentencePiece's own, see UnigramViterbi.
    private void AppendSentencePiece(string segment, List<int> ids)
    {
        segment = RemoveDeletedControls(segment);
        _sp.EncodeToTokens(segment, out string? normalized, addBeginningOfSentence: false, addEndOfSentence: false);
        if (string.IsNullOrEmpty(normalized)) return;
        var encoded = _viterbi.Encode(normalized);
        // SentencePieceProcessor merges a run of unknown characters into one <unk>.
        for (int i = 0; i < encoded.Count; i++)
        {
            if (encoded[i] == UnkId && i > 0 && encoded[i - 1] == UnkId) continue;
            ids.Add(encoded[i]);
        }
    }

    // T5's precompiled normalization map deletes these control characters (measured with sentencepiece 0.1.97 over
    // every code point); Microsoft.ML.Tokenizers 2.0.1 keeps them and emits <unk>.
    private static bool IsDeletedControl(char c) => c is >= '\u0001' and <= '\u0008' or '\u000b'
        or >= '\u000e' and <= '\u001f' or '\u007f' or '\u008f' or '\u009f';

    private static string RemoveDeletedControls(string s)
    {
        if (!s.Any(IsDeletedControl)) return s;
        return string.Concat(s.Where(c => !IsDeletedControl(c)));
    }

    // T5's spiece.model has bos_id = -1, which Microsoft.ML.Tokenizers 2.0.1 cannot load (IndexOutOfRangeException).
    // Appending a second ModelProto.trainer_spec (field 2) merges into the first, as protobuf does for repeated
    // message fields: TrainerSpec.bos_id (field 41) = 0 and bos_piece (field 46) = "<pad>". We never ask for a BOS.
    private static byte[] WithBosId0(byte[] model)
    {
        byte[] patch =
        [
            0x12, 11,                                  // field 2 (trainer_spec), length-delimited, 11 bytes
            0xC8, 0x02, 0x00,                          // field 41 (bos_id), varint 0
            0xF2, 0x02, 5, (byte)'<', (byte)'p', (byte)'a', (byte)'d', (byte)'>', // field 46 (bos_piece)
        ];
        var result = new byte[model.Length + patch.Length];
        model.CopyTo(result, 0);
        patch.CopyTo(result, model.Length);
        return result;
    }
}
