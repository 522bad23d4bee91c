using System.Reflection;
using System.Runtime.CompilerServices;
using System.Xml.Linq;
using PixArtSharp.Pipeline;
using Xunit.Abstractions;

namespace PixArtSharp.Tests.Library;

/// <summary>
/// The library's public surface (issue 19 §3): only what a user needs is exported — pipelines, requests, results,
/// options, the Hub download, PNG reading and writing, the exceptions a caller catches, <see cref="PixArtImageGenerator"/>
/// — and every exported member has a summary in the XML documentation that ships in the package. The compiler's
/// CS1591 catches a member without any doc comment; this also catches one documented by its parameters alone.
/// (PublicAPI.Unshipped.txt is kept in step by the PublicApiAnalyzers at build time.)
/// </summary>
public sealed class PublicSurfaceTests(ITestOutputHelper output)
{
    private static readonly Assembly Library = typeof(PixArtPipeline).Assembly;

    [Fact]
    public void OnlyUserFacingNamespacesAndTypesAreExported()
    {
        var exported = Library.GetExportedTypes();
        output.WriteLine($"{exported.Length} exported types");
        Assert.Equal(
            ["Microsoft.Extensions.DependencyInjection", "PixArtSharp", "PixArtSharp.Hub", "PixArtSharp.Imaging", "PixArtSharp.Loading",
             "PixArtSharp.Loading.Gguf", "PixArtSharp.Loading.Lora", "PixArtSharp.Pipeline", "PixArtSharp.Schedulers"],
            exported.Select(t => t.Namespace!).Distinct().Order(StringComparer.Ordinal));
        // Model internals, the tokenizer and caption cleaning, and the bench stay inside (namespaces with no export above).
        // From the loaders, only what a caller catches or passes in.
        Assert.All(exported.Where(t => t.Namespace!.StartsWith("PixArtSharp.Loading", StringComparison.Ordinal)),
            t => Assert.True(typeof(Exception).IsAssignableFrom(t) || t == typeof(PixArtSharp.Loading.Lora.LoraSpec), $"{t} is exported"));
        // Schedulers are chosen by name; their classes are internal.
        Assert.Equal([typeof(PixArtSharp.Schedulers.SchedulerFactory)], exported.Where(t => t.Namespace == "PixArtSharp.Schedulers"));
        Assert.Equal(["Names"], typeof(PixArtSharp.Schedulers.SchedulerFactory).GetMembers(BindingFlags.Public | BindingFlags.Static | BindingFlags.DeclaredOnly).Select(m => m.Name));
        // A pipeline hands out no model object: those members are internal (the CLI, the bench and the tests use them).
        var pipelineMembers = typeof(PixArtPipeline).GetMembers(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static).Select(m => m.Name).ToHashSet();
        foreach (var name in new[] { "LoadTransformer", "LoadVae", "LoadTextEncoder", "Tokenizer", "TransformerConfig", "Scheduler", "Folder" })
            Assert.DoesNotContain(name, pipelineMembers);
    }

    [Fact]
    public void EveryExportedMemberHasASummary()
    {
        string xmlPath = Path.ChangeExtension(Library.Location, ".xml");
        Assert.True(File.Exists(xmlPath), $"{xmlPath} is missing: the library builds its XML documentation (GenerateDocumentationFile).");
        var documented = XDocument.Load(xmlPath).Descendants("member")
            .Where(m => m.Element("summary") is { } s && s.Value.Trim().Length > 0 || m.Element("inheritdoc") is not null)
            .Select(m => (string)m.Attribute("name")!)
            .ToHashSet(StringComparer.Ordinal);

        var ids = Library.GetExportedTypes().SelectMany(MemberIds).ToList();
        var missing = ids.Where(id => !documented.Contains(id)).ToList();
        output.WriteLine($"{ids.Count} exported members, {missing.Count} without a summary");
        Assert.True(missing.Count == 0, "Exported members without a <summary>:\n" + string.Join("\n", missing));
    }

    /// <summary>The documentation ids (ECMA-334 annex D) of a type and of the members a user sees on it.</summary>
    private static IEnumerable<string> MemberIds(Type type)
    {
        string t = TypeId(type);
        yield return "T:" + t;
        const BindingFlags flags = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        static bool Visible(MethodBase m) => m.IsPublic || m.IsFamily || m.IsFamilyOrAssembly;
        static bool Written(MemberInfo m) => !m.IsDefined(typeof(CompilerGeneratedAttribute));   // records' Equals, Deconstruct, <Clone>$…
        foreach (var c in type.GetConstructors(flags).Where(c => Visible(c) && c.GetParameters().Length > 0 && Written(c)))
            yield return $"M:{t}.#ctor{Parameters(c)}";
        foreach (var m in type.GetMethods(flags).Where(m => Visible(m) && !m.IsSpecialName && Written(m)))
            yield return $"M:{t}.{m.Name}{(m.IsGenericMethod ? "``" + m.GetGenericArguments().Length : "")}{Parameters(m)}";
        foreach (var p in type.GetProperties(flags).Where(p => p.GetAccessors(nonPublic: true).Any(Visible) && Written(p)))
            yield return $"P:{t}.{p.Name}{(p.GetIndexParameters().Length > 0 ? Parameters(p.GetIndexParameters()) : "")}";
        foreach (var f in type.GetFields(flags).Where(f => (f.IsPublic || f.IsFamily || f.IsFamilyOrAssembly) && !f.IsSpecialName && Written(f)))
            yield return $"F:{t}.{f.Name}";
        foreach (var e in type.GetEvents(flags).Where(e => e.AddMethod is { } add && Visible(add)))
            yield return $"E:{t}.{e.Name}";
    }

    private static string Parameters(MethodBase m) => Parameters(m.GetParameters());

    private static string Parameters(ParameterInfo[] ps) =>
        ps.Length == 0 ? "" : "(" + string.Join(",", ps.Select(p => TypeId(p.ParameterType))) + ")";

    private static string TypeId(Type t)
    {
        if (t.IsByRef) return TypeId(t.GetElementType()!) + "@";
        if (t.IsArray) return TypeId(t.GetElementType()!) + "[]";
        if (t.IsGenericParameter) return (t.DeclaringMethod is null ? "`" : "``") + t.GenericParameterPosition;
        if (!t.IsGenericType) return t.FullName!.Replace('+', '.');
        string name = t.GetGenericTypeDefinition().FullName!.Replace('+', '.');
        name = name[..name.IndexOf('`', StringComparison.Ordinal)];
        return t.IsConstructedGenericType ? $"{name}{{{string.Join(",", t.GetGenericArguments().Select(TypeId))}}}" : name;
    }
}
