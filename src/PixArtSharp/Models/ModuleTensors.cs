using System.Collections;
using System.Reflection;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Models;

/// <summary>
/// nn.Module.to(device) for PixArtSharp's models, which hold their weights in plain fields named as checkpoint keys
/// (Layers.cs): walks a model's fields — tensors, sub-modules, arrays and lists of sub-modules — and replaces every
/// tensor by its copy on the device, disposing the old one. A tensor held in two places (tied weights) is moved once
/// and both places get the same new tensor. A dictionary of tensors is a cache of derived values (PatchEmbed's
/// position tables): it is emptied, and refills on the new device. A field of type Device (a model's recorded
/// <c>Device</c>) is set to the new device. Types outside PixArtSharp and PixArtSharp.Loading's (the weight files
/// themselves) are not entered.
/// </summary>
internal static class ModuleTensors
{
    /// <summary>
    /// Moves every tensor of <paramref name="model"/> to <paramref name="device"/>; returns the bytes the moved tensors
    /// hold. Sub-modules in <paramref name="except"/> are left where they are (sequential offload moves the blocks
    /// one at a time and the rest of the model for the whole stage).
    /// </summary>
    public static long MoveTo(object model, Device device, IReadOnlySet<object>? except = null)
    {
        var moved = new Dictionary<Tensor, Tensor>(ReferenceEqualityComparer.Instance);
        try
        {
            var visited = new HashSet<object>(ReferenceEqualityComparer.Instance);
            if (except is not null) visited.UnionWith(except);
            Walk(model, visited, (t, _) =>
            {
                if (!moved.TryGetValue(t, out var n))
                {
                    // Outside any dispose scope the caller may be in: the model owns these now.
                    n = t.to(device).DetachFromDisposeScope();
                    moved[t] = n;
                }
                return n;
            }, device);
        }
        catch
        {
            // Fields already replaced keep their new tensors; the old ones they replaced are freed below either way.
            foreach (var (old, n) in moved) if (!ReferenceEquals(old, n)) old.Dispose();
            throw;
        }
        long bytes = 0;
        foreach (var (old, n) in moved)
        {
            bytes += n.NumberOfElements * n.ElementSize;
            if (!ReferenceEquals(old, n)) old.Dispose();
        }
        return bytes;
    }

    /// <summary>Every distinct tensor a model holds (what <see cref="MoveTo"/> moves), caches excluded.</summary>
    public static IReadOnlyList<Tensor> Enumerate(object model)
    {
        var seen = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        var list = new List<Tensor>();
        Walk(model, new HashSet<object>(ReferenceEqualityComparer.Instance), (t, _) => { if (seen.Add(t)) list.Add(t); return t; }, null);
        return list;
    }

    /// <summary>The device of a model's first tensor (CPU for a model without tensors).</summary>
    public static Device DeviceOf(object model) => Enumerate(model) is [var first, ..] ? first.device : CPU;

    private static void Walk(object node, HashSet<object> visited, Func<Tensor, FieldInfo?, Tensor> visit, Device? device)
    {
        if (!visited.Add(node)) return;
        for (var type = node.GetType(); type is not null && type != typeof(object); type = type.BaseType)
        {
            foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                var value = field.GetValue(node);
                switch (value)
                {
                    case null:
                        break;
                    case Tensor t:
                        var n = visit(t, field);
                        // Readonly instance fields (the models' weights) are set through reflection, as nn.Module does.
                        if (!ReferenceEquals(n, t)) field.SetValue(node, n);
                        break;
                    case Device when device is not null && field.FieldType == typeof(Device):
                        field.SetValue(node, device);
                        break;
                    case Tensor?[] tensors:
                        for (int i = 0; i < tensors.Length; i++)
                            if (tensors[i] is { } ti) tensors[i] = visit(ti, field);
                        break;
                    case IDictionary dict when IsTensorDictionary(dict):
                        if (device is null) break;   // enumerating: caches are not weights
                        lock (dict)
                        {
                            foreach (var v in dict.Values) (v as Tensor)?.Dispose();
                            dict.Clear();
                        }
                        break;
                    case IEnumerable items when value is not string && IsModuleContainer(value.GetType()):
                        foreach (var item in items)
                            if (item is not null && IsModule(item.GetType())) Walk(item, visited, visit, device);
                        break;
                    default:
                        if (IsModule(value.GetType())) Walk(value, visited, visit, device);
                        break;
                }
            }
        }
    }

    private static bool IsModule(Type t) =>
        t.IsClass && t.Assembly == typeof(ModuleTensors).Assembly && !typeof(Delegate).IsAssignableFrom(t)
        && t.Namespace != "PixArtSharp.Loading";

    private static bool IsModuleContainer(Type t) =>
        t.IsArray ? IsModule(t.GetElementType()!)
        : t.IsGenericType && t.GetGenericArguments() is [var arg] && IsModule(arg);

    private static bool IsTensorDictionary(IDictionary dict) =>
        dict.GetType().IsGenericType && dict.GetType().GetGenericArguments() is [_, var v] && typeof(Tensor).IsAssignableFrom(v);
}
