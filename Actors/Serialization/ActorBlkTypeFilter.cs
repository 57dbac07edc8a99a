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

    private static readonly HashSet<string> AllowedSystemTypes = new(StringComparer.Ordinal)
    {
        "System.String", "System.Byte[]", "System.Int16", "System.Int32", "System.Int64", "System.UInt16",
        "System.UInt32", "System.UInt64", "System.Byte", "System.SByte", "System.Boolean", "System.Double",
        "System.Single", "System.Decimal", "System.Char", "System.TimeSpan", "System.DateTime",
        "System.DateTimeOffset", "System.Guid", "System.String[]", "System.Int32[]", "System.Int64[]",
        "System.Nullable`1", "System.Collections.Generic.List`1", "System.Collections.Generic.Dictionary`2",
        "System.Collections.Generic.KeyValuePair`2", "System.Collections.Immutable.ImmutableArray`1",
        "System.Collections.Immutable.ImmutableList`1", "System.Collections.Immutable.ImmutableDictionary`2",
        "Akka.Actor.ActorRefBase+Surrogate", "Akka.Actor.Address",
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

    private static readonly ConcurrentDictionary<string, bool> Decisions = new(StringComparer.Ordinal);

    /// <summary>True for a normalised (unqualified) type name on the allow-list.</summary>
    public static bool IsAllowedName(string fullName)
    {
        ArgumentNullException.ThrowIfNull(fullName);
        if (AllowedSystemTypes.Contains(fullName))
        {
            return true;
        }

        // An array is allowed when its element type is.
        if (fullName.EndsWith("[]", StringComparison.Ordinal))
        {
            return IsAllowedName(fullName[..^2]);
        }

        return fullName.StartsWith("ActorBlk.", StringComparison.Ordinal) && Decisions.GetOrAdd(fullName, IsActorBlkWireType);
    }

    // Only types of ActorBlk's own assemblies that are messages, or enums carried by messages.
    private static bool IsActorBlkWireType(string fullName)
    {
        var type = typeof(IActorBlkMessage).Assembly.GetType(fullName, throwOnError: false)
                   ?? typeof(BlockOp).Assembly.GetType(fullName, throwOnError: false);
        return type is not null && (typeof(IActorBlkMessage).IsAssignableFrom(type) || type.IsEnum);
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
                SkipAssembly(text, ref pos);
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

        allowed = argsAllowed && IsAllowedName(name);
        return true;
    }

    // Skips ", Assembly, Version=..., Culture=..., PublicKeyToken=..." up to the closing bracket of
    // a generic argument (or the end of the text).
    private static void SkipAssembly(string text, ref int pos)
    {
        while (pos < text.Length && text[pos] != ']')
        {
            pos++;
        }
    }
}
