using System.Collections.Concurrent;
using ActorBlk.Hardware.Requests;
using Hyperion;

namespace ActorBlk.Actors.Serialization;

/// <summary>
/// The allow-list Hyperion consults before it serializes or instantiates a type: ActorBlk's own
/// messages (types implementing <see cref="IActorBlkMessage"/>) and the enums they carry, actor
/// reference surrogates, and a few system types they are built from. Everything else, including
/// every other ActorBlk type, is refused, so a peer cannot make this node instantiate arbitrary
/// types (CWE-502).
/// </summary>
/// <remarks>
/// Hyperion's shipped allow-list does not work: it compares the fully versioned assembly-qualified
/// name it is given on serialization with the short names it stores, and refuses everything
/// (see reference/akka-notes.md §A3). This filter normalises both forms. On serialization it is
/// asked the root type's assembly-qualified name; on deserialization every non-primitive type of
/// the graph in Hyperion's short form, generic arguments included, e.g.
/// <c>System.Collections.Generic.List`1[[System.String, System.Private.CoreLib,%core%]], System.Private.CoreLib,%core%</c>.
/// </remarks>
public sealed class ActorBlkTypeFilter : ITypeFilter
{
    /// <summary>The filter instance.</summary>
    public static ActorBlkTypeFilter Instance { get; } = new();

    // Each allowed system type with the assembly it must come from: a name is never trusted alone,
    // since "System.String, EvilAssembly" would make Hyperion load that assembly's type.
    private static readonly Dictionary<string, string> AllowedSystemTypes = new Type[]
    {
        typeof(string), typeof(byte[]), typeof(short), typeof(int), typeof(long), typeof(ushort),
        typeof(uint), typeof(ulong), typeof(byte), typeof(sbyte), typeof(bool), typeof(double),
        typeof(float), typeof(decimal), typeof(char), typeof(TimeSpan), typeof(DateTime),
        typeof(DateTimeOffset), typeof(Guid), typeof(string[]), typeof(int[]), typeof(long[]),
        typeof(Nullable<>), typeof(List<>), typeof(Dictionary<,>),
        typeof(KeyValuePair<,>), typeof(System.Collections.Immutable.ImmutableArray<>),
        typeof(System.Collections.Immutable.ImmutableList<>), typeof(System.Collections.Immutable.ImmutableDictionary<,>),
        typeof(Akka.Actor.ActorRefBase.Surrogate), typeof(Akka.Actor.Address),
    }.ToDictionary(t => t.FullName!, t => t.Assembly.GetName().Name!, StringComparer.Ordinal);

    // The core library goes by several names on the wire (Hyperion writes "%core%" forms, .NET
    // Framework peers write mscorlib); all of them mean the runtime's own core library here.
    private static readonly HashSet<string> CoreLibraryNames = new(StringComparer.Ordinal)
    {
        typeof(object).Assembly.GetName().Name!, "mscorlib", "System.Private.CoreLib", "System.Runtime", "netstandard",
    };

    /// <inheritdoc />
    public bool IsAllowed(string typeName)
    {
        if (string.IsNullOrEmpty(typeName))
        {
            return false;
        }

        var pos = 0;
        return TryAllow(typeName, ref pos, out var allowed) && allowed;
    }

    private static readonly ConcurrentDictionary<string, string?> Decisions = new(StringComparer.Ordinal);

    // ActorBlk messages that are never read as themselves: they have a surrogate on the wire.
    private static readonly HashSet<string> SurrogatedOnly = new(
        typeof(IActorBlkMessage).Assembly.GetTypes()
            .Where(t => typeof(IActorBlkMessage).IsAssignableFrom(t) && typeof(Akka.Util.ISurrogated).IsAssignableFrom(t))
            .Select(t => t.FullName!),
        StringComparer.Ordinal);

    /// <summary>
    /// True for a normalised (unqualified) type name on the allow-list that comes from
    /// <paramref name="assembly"/> (a simple assembly name, e.g. <c>ActorBlk.Actors</c>).
    /// </summary>
    public static bool IsAllowedName(string fullName, string assembly)
    {
        ArgumentNullException.ThrowIfNull(fullName);
        ArgumentNullException.ThrowIfNull(assembly);
        if (AllowedSystemTypes.TryGetValue(fullName, out var home))
        {
            return home == assembly || (CoreLibraryNames.Contains(home) && CoreLibraryNames.Contains(assembly));
        }

        // An array is allowed when its element type is (the array lives in the element's assembly).
        if (fullName.EndsWith("[]", StringComparison.Ordinal))
        {
            return IsAllowedName(fullName[..^2], assembly);
        }

        // A type with a wire surrogate (ISurrogated) travels as its surrogate only: read as itself
        // it could nest (an envelope in an envelope). Hyperion asks about the root type when it
        // writes one too, so the refusal holds only while a payload is read.
        return fullName.StartsWith("ActorBlk.", StringComparison.Ordinal)
               && Decisions.GetOrAdd(fullName, IsActorBlkWireType) is { } actual && actual == assembly
               && !(ActorBlkHyperionSerializer.Reading && SurrogatedOnly.Contains(fullName));
    }

    // The assembly of an ActorBlk type that is a message, or an enum carried by messages; null for
    // every other type (and for names no ActorBlk assembly defines).
    private static string? IsActorBlkWireType(string fullName)
    {
        var type = typeof(IActorBlkMessage).Assembly.GetType(fullName, throwOnError: false)
                   ?? typeof(BlockOp).Assembly.GetType(fullName, throwOnError: false);
        // Only concrete types: a manifest names the runtime type of a value, never an interface or
        // an abstract class, and one in a generic argument (List<IActorBlkMessage>) would let values
        // nest inside values to any depth.
        return type is not null && !type.IsInterface && !type.IsAbstract
               && (typeof(IActorBlkMessage).IsAssignableFrom(type) || type.IsEnum)
            ? type.Assembly.GetName().Name
            : null;
    }

    // Parses "Full.Name[`n[[arg, asm],[arg, asm]]][, assembly...]" from pos, checking the name and
    // every generic argument; leaves pos after the type name's assembly part at this nesting level.
    private static bool TryAllow(string text, ref int pos, out bool allowed)
    {
        allowed = false;
        var start = pos;
        while (pos < text.Length && text[pos] is not ('[' or ',' or ']'))
        {
            pos++;
        }

        var name = text[start..pos].Trim();
        if (name.Length == 0)
        {
            return false;
        }

        var argsAllowed = true;

        // Generic arguments: "[[A, asm],[B, asm]]". A trailing "[]" is an array marker, part of the name.
        if (pos + 1 < text.Length && text[pos] == '[' && text[pos + 1] == '[')
        {
            pos++;
            while (pos < text.Length && text[pos] == '[')
            {
                pos++;
                if (!TryAllow(text, ref pos, out var argAllowed))
                {
                    return false;
                }

                argsAllowed &= argAllowed;
                if (pos >= text.Length || text[pos] != ']')
                {
                    return false;
                }

                pos++;
                if (pos < text.Length && text[pos] == ',')
                {
                    pos++;
                }
            }

            if (pos >= text.Length || text[pos] != ']')
            {
                return false;
            }

            pos++;
        }

        while (pos + 1 < text.Length && text[pos] == '[' && text[pos + 1] == ']')
        {
            name += "[]";
            pos += 2;
        }

        // The assembly: ", Assembly[, Version=..., Culture=..., PublicKeyToken=...]" up to the
        // closing bracket of a generic argument (or the end of the text). A name without one is
        // refused: the resolver would pick the assembly itself.
        var assembly = ReadAssembly(text, ref pos);
        allowed = argsAllowed && assembly is not null && IsAllowedName(name, assembly);
        return true;
    }

    // Reads the simple assembly name after the type name and leaves pos at the closing bracket of
    // a generic argument (or the end of the text); null when there is none.
    private static string? ReadAssembly(string text, ref int pos)
    {
        var start = pos;
        while (pos < text.Length && text[pos] != ']')
        {
            pos++;
        }

        var part = text[start..pos].Trim();
        if (part.Length == 0 || part[0] != ',')
        {
            return null;
        }

        var simple = part[1..].Split(',')[0].Trim();
        return simple.Length == 0 ? null : simple;
    }
}
