using System.Collections.Frozen;
using System.Reflection;
using System.Runtime.Serialization;
using System.Text;

namespace ActorBlk.Actors.Serialization;

/// <summary>
/// The exact shape of every ActorBlk payload, checked byte by byte before Hyperion reads one
/// (README, "Security"). Hyperion trusts what it reads: it allocates a length it was told before it
/// reads the bytes (a 0.5 KB message made a node allocate 2 GB), and it follows a type index back to
/// any type seen earlier in the payload, so three bytes per level nest a value in itself until the
/// reader's stack overflows and the process dies (a 3 KB message). This check walks Hyperion's
/// format (0.12, version tolerance on, no object references) over a closed schema built from the
/// wire types themselves:
/// <list type="bullet">
/// <item>the root is a concrete ActorBlk message (or the envelope's wire form), named exactly as
/// Hyperion names it;</item>
/// <item>every field holds its declared type or null, nothing else, so values nest only as deep as
/// the types do (the schema has no cycle);</item>
/// <item>every length and count fits in the bytes that remain, and the payload ends where the root
/// value ends.</item>
/// </list>
/// A payload that fails is refused with a <see cref="SerializationException"/> and Hyperion never
/// sees it. A message type with a field the schema cannot describe (an interface, a generic
/// collection) fails the schema's construction, and with it every spec that touches the wire.
/// </summary>
internal static class WireSchema
{
    // Hyperion's manifests (ValueSerializers/*.cs: the Manifest constants).
    private const byte NullManifest = 0;
    private const byte StringManifest = 7;
    private const byte ByteArrayManifest = 9;
    private const byte ManifestVersion = 251;
    private const byte ConsistentArrayManifest = 252;
    private const byte ManifestIndex = 254;
    private const byte ManifestFull = 255;

    // Longest type name accepted on the wire: ActorBlk's are under 100 bytes.
    private const int MaxTypeName = 512;

    // Most distinct types one payload may name (Hyperion indexes them with a 16-bit number).
    private const int MaxTypesPerPayload = 64;

    private enum Kind
    {
        Primitive,
        String,
        Bytes,
        Enum,
        PrimitiveArray,
        ObjectArray,
        Object,
    }

    private sealed class Shape(Type type, Kind kind)
    {
        public Type Type { get; } = type;

        public Kind Kind { get; } = kind;

        // Primitive: its manifest and its size on the wire (0 for a string).
        public byte Manifest { get; init; }

        public int Size { get; init; }

        // Enum (its underlying primitive), PrimitiveArray and ObjectArray (the element).
        public Shape? Element { get; set; }

        // Object: the fields in Hyperion's order.
        public Shape[] Fields { get; set; } = [];

        public bool Nullable => !Type.IsValueType;
    }

    // The primitives Hyperion writes with a manifest of their own, and their sizes.
    private static readonly FrozenDictionary<Type, Shape> Primitives = new Shape[]
    {
        new(typeof(long), Kind.Primitive) { Manifest = 2, Size = 8 },
        new(typeof(short), Kind.Primitive) { Manifest = 3, Size = 2 },
        new(typeof(byte), Kind.Primitive) { Manifest = 4, Size = 1 },
        new(typeof(DateTime), Kind.Primitive) { Manifest = 5, Size = 9 },
        new(typeof(bool), Kind.Primitive) { Manifest = 6, Size = 1 },
        new(typeof(string), Kind.String) { Manifest = StringManifest },
        new(typeof(int), Kind.Primitive) { Manifest = 8, Size = 4 },
        new(typeof(byte[]), Kind.Bytes) { Manifest = ByteArrayManifest },
        new(typeof(DateTimeOffset), Kind.Primitive) { Manifest = 10, Size = 16 },
        new(typeof(Guid), Kind.Primitive) { Manifest = 11, Size = 16 },
        new(typeof(float), Kind.Primitive) { Manifest = 12, Size = 4 },
        new(typeof(double), Kind.Primitive) { Manifest = 13, Size = 8 },
        new(typeof(decimal), Kind.Primitive) { Manifest = 14, Size = 16 },
        new(typeof(char), Kind.Primitive) { Manifest = 15, Size = 2 },
        new(typeof(ushort), Kind.Primitive) { Manifest = 17, Size = 2 },
        new(typeof(uint), Kind.Primitive) { Manifest = 18, Size = 4 },
        new(typeof(ulong), Kind.Primitive) { Manifest = 19, Size = 8 },
        new(typeof(sbyte), Kind.Primitive) { Manifest = 20, Size = 1 },
    }.ToFrozenDictionary(s => s.Type);

    // Element types whose arrays Hyperion copies as one block (TypeEx.IsFixedSizeType); the other
    // primitives are read one value at a time, without a manifest each.
    private static readonly FrozenSet<Type> BlockCopied = new[]
    {
        typeof(short), typeof(int), typeof(long), typeof(bool), typeof(ushort), typeof(uint), typeof(ulong), typeof(char),
    }.ToFrozenSet();

    private static readonly Schema Instance = Build();

    /// <summary>The root types a payload may carry (for specs).</summary>
    internal static IReadOnlyCollection<Type> RootTypes => Instance.Roots;

    /// <summary>
    /// Refuses <paramref name="payload"/> unless it is exactly one well-formed ActorBlk message whose
    /// lengths and counts all fit in its bytes.
    /// </summary>
    /// <exception cref="SerializationException">The payload does not match the schema.</exception>
    public static void Check(ReadOnlySpan<byte> payload)
    {
        var reader = new Reader(payload);
        reader.Root();
        if (reader.Remaining != 0)
        {
            throw Refuse($"{reader.Remaining} bytes follow the message");
        }
    }

    private static SerializationException Refuse(string why) => new($"ActorBlk refuses a payload that does not match its wire schema: {why}.");

    private sealed record Schema(FrozenDictionary<string, Shape> ByName, FrozenSet<Type> Roots);

    // Walks the payload as Hyperion would read it. Positions only move forward and every length is
    // checked against what remains before it is skipped, so the walk costs O(payload) and allocates
    // nothing.
    private ref struct Reader(ReadOnlySpan<byte> payload)
    {
        private readonly ReadOnlySpan<byte> _payload = payload;
        private int _pos;
        private int _typeCount;
        private TypeTable _types;

        public readonly int Remaining => _payload.Length - _pos;

        public void Root()
        {
            var manifest = Byte();
            if (manifest is not (ManifestVersion or ManifestFull))
            {
                throw Refuse($"the root has manifest {manifest}, not a named type");
            }

            var shape = NamedType(manifest);
            if (!Instance.Roots.Contains(shape.Type))
            {
                throw Refuse($"{shape.Type.Name} is not a message");
            }

            Body(shape);
        }

        // A field's value: its manifest, then the body of the type the manifest names, which must be
        // the field's declared type (or null where it may be null).
        private void Value(Shape declared)
        {
            var manifest = Byte();
            if (manifest == NullManifest)
            {
                if (!declared.Nullable)
                {
                    throw Refuse($"a null where a {declared.Type.Name} is required");
                }

                return;
            }

            Shape actual;
            switch (declared.Kind)
            {
                case Kind.Primitive or Kind.String or Kind.Bytes:
                    if (manifest != declared.Manifest)
                    {
                        throw Refuse($"manifest {manifest} where a {declared.Type.Name} is required");
                    }

                    Primitive(declared);
                    return;
                case Kind.PrimitiveArray:
                    if (manifest != ConsistentArrayManifest)
                    {
                        throw Refuse($"manifest {manifest} where a {declared.Type.Name} is required");
                    }

                    PrimitiveArray(declared);
                    return;
                default:
                    actual = manifest switch
                    {
                        ManifestVersion or ManifestFull => NamedType(manifest),
                        ManifestIndex => IndexedType(),
                        _ => throw Refuse($"manifest {manifest} where a {declared.Type.Name} is required"),
                    };
                    break;
            }

            if (!ReferenceEquals(actual, declared))
            {
                throw Refuse($"a {actual.Type.Name} where a {declared.Type.Name} is required");
            }

            Body(actual);
        }

        private void Body(Shape shape)
        {
            switch (shape.Kind)
            {
                case Kind.Enum:
                    // An enum is an object with one field, value__, of its underlying type.
                    Value(shape.Element!);
                    break;
                case Kind.ObjectArray:
                    var count = Length("array length");
                    for (var i = 0; i < count; i++)
                    {
                        Value(shape.Element!);
                    }

                    break;
                case Kind.Object:
                    foreach (var field in shape.Fields)
                    {
                        Value(field);
                    }

                    break;
                default:
                    throw Refuse($"{shape.Type.Name} is not read by name");
            }
        }

        private void Primitive(Shape shape)
        {
            switch (shape.Kind)
            {
                case Kind.String:
                    String();
                    break;
                case Kind.Bytes:
                    Skip(Length("byte array length"));
                    break;
                default:
                    Skip(shape.Size);
                    break;
            }
        }

        // Hyperion's string: a length byte (0 null, 255 an Int32 length follows, else length + 1) and UTF-8.
        private void String()
        {
            var first = Byte();
            switch (first)
            {
                case 0:
                    return;
                case 255:
                    Skip(Length("string length"));
                    return;
                default:
                    Skip(first - 1);
                    return;
            }
        }

        // ConsistentArraySerializer: the element's manifest, an Int32 length, then the elements
        // (one block for fixed-size types, else one value each without a manifest).
        private void PrimitiveArray(Shape declared)
        {
            var element = declared.Element!;
            var manifest = Byte();
            if (manifest != element.Manifest)
            {
                throw Refuse($"element manifest {manifest} in a {declared.Type.Name}");
            }

            var length = Length("array length");
            if (BlockCopied.Contains(element.Type))
            {
                if ((long)length * element.Size > Remaining)
                {
                    throw Refuse($"an array of {length} elements in {Remaining} bytes");
                }

                Skip(length * element.Size);
                return;
            }

            for (var i = 0; i < length; i++)
            {
                Primitive(element);
            }
        }

        // A type named in full (ManifestFull) or with its field names (ManifestVersion): the name
        // must be a schema type's exact wire name. The type joins the payload's index table.
        private Shape NamedType(byte manifest)
        {
            var length = Int32();
            if (length <= 0 || length > MaxTypeName || length > Remaining)
            {
                throw Refuse($"a type name of {length} bytes");
            }

            var name = _payload.Slice(_pos, length);
            _pos += length;
            Span<char> chars = stackalloc char[MaxTypeName];
            for (var i = 0; i < name.Length; i++)
            {
                if (name[i] >= 0x80)
                {
                    throw Refuse("a type name that is not ASCII");
                }

                chars[i] = (char)name[i];
            }

            if (!Instance.ByName.GetAlternateLookup<ReadOnlySpan<char>>().TryGetValue(chars[..name.Length], out var shape))
            {
                throw Refuse($"unknown type {Encoding.ASCII.GetString(name)}");
            }

            if (manifest == ManifestVersion)
            {
                // The sender's field names: Hyperion reads and ignores them.
                int fields = Byte();
                for (var i = 0; i < fields; i++)
                {
                    Skip(Length("field name length"));
                }
            }

            if (_typeCount == MaxTypesPerPayload)
            {
                throw Refuse($"more than {MaxTypesPerPayload} named types");
            }

            _types[_typeCount++] = shape;
            return shape;
        }

        private Shape IndexedType()
        {
            if (Remaining < 2)
            {
                throw Refuse("the payload ends inside a type index");
            }

            int index = _payload[_pos] | (_payload[_pos + 1] << 8);
            _pos += 2;
            if (index >= _typeCount)
            {
                throw Refuse($"type index {index} of {_typeCount} named");
            }

            return _types[index]!;
        }

        // A non-negative Int32 no larger than the bytes that remain: every honest length or count
        // is (each element takes at least one byte).
        private int Length(string what)
        {
            var value = Int32();
            if (value < 0 || value > Remaining)
            {
                throw Refuse($"a {what} of {value} with {Remaining} bytes left");
            }

            return value;
        }

        private int Int32()
        {
            if (Remaining < 4)
            {
                throw Refuse("the payload ends inside a length");
            }

            var value = System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(_payload[_pos..]);
            _pos += 4;
            return value;
        }

        private byte Byte()
        {
            if (Remaining < 1)
            {
                throw Refuse("the payload ends early");
            }

            return _payload[_pos++];
        }

        private void Skip(int count)
        {
            if (count > Remaining)
            {
                throw Refuse($"{count} bytes wanted, {Remaining} left");
            }

            _pos += count;
        }
    }

    [System.Runtime.CompilerServices.InlineArray(MaxTypesPerPayload)]
    private struct TypeTable
    {
        private Shape? _element;
    }

    // The schema: every concrete ActorBlk message read as itself (a surrogated one travels as its
    // surrogate) and every type their fields reach.
    private static Schema Build()
    {
        var assembly = typeof(IActorBlkMessage).Assembly;
        var roots = assembly.GetTypes()
            .Where(t => !t.IsAbstract && !t.IsInterface && !t.ContainsGenericParameters)
            .Where(t => typeof(IActorBlkMessage).IsAssignableFrom(t) && !typeof(Akka.Util.ISurrogated).IsAssignableFrom(t))
            .ToList();
        var shapes = new Dictionary<Type, Shape>();
        foreach (var root in roots)
        {
            ShapeOf(root, shapes, []);
        }

        var byName = shapes.Values
            .Where(s => s.Kind is Kind.Object or Kind.Enum or Kind.ObjectArray)
            .ToFrozenDictionary(s => WireName(s.Type), StringComparer.Ordinal);
        return new Schema(byName, roots.ToFrozenSet());
    }

    private static Shape ShapeOf(Type type, Dictionary<Type, Shape> shapes, HashSet<Type> path)
    {
        if (Primitives.TryGetValue(type, out var primitive))
        {
            return primitive;
        }

        if (shapes.TryGetValue(type, out var known))
        {
            return known;
        }

        if (!path.Add(type))
        {
            throw new NotSupportedException($"{type} contains itself: a wire type must not (values could nest without bound).");
        }

        Shape shape;
        if (type.IsEnum)
        {
            shape = new Shape(type, Kind.Enum) { Element = ShapeOf(Enum.GetUnderlyingType(type), shapes, path) };
        }
        else if (type.IsArray && type.GetArrayRank() == 1 && Primitives.TryGetValue(type.GetElementType()!, out var element)
                 && element.Kind != Kind.Bytes)
        {
            // TypeEx.IsOneDimensionalPrimitiveArray: Hyperion's ConsistentArraySerializer.
            shape = new Shape(type, Kind.PrimitiveArray) { Element = element };
        }
        else if (type.IsArray && type.GetArrayRank() == 1)
        {
            shape = new Shape(type, Kind.ObjectArray);
            shapes[type] = shape;
            shape.Element = ShapeOf(type.GetElementType()!, shapes, path);
        }
        else if (type.IsSealed && !type.IsGenericType && (type.IsValueType || type.IsClass)
                 && !typeof(System.Collections.IEnumerable).IsAssignableFrom(type)
                 && !typeof(ISerializable).IsAssignableFrom(type))
        {
            shape = new Shape(type, Kind.Object);
            shapes[type] = shape;
            shape.Fields = HyperionFields(type).Select(f => ShapeOf(f.FieldType, shapes, path)).ToArray();
        }
        else
        {
            throw new NotSupportedException(
                $"{type} cannot travel in an ActorBlk message: fields must be primitives, strings, byte arrays, enums, " +
                "arrays, or sealed non-generic ActorBlk types (WireSchema).");
        }

        shapes[type] = shape;
        path.Remove(type);
        return shape;
    }

    // Hyperion's field list (ReflectionEx.GetFieldInfosForType): every instance field of the type
    // and its bases, but for [NonSerialized], Hyperion's [Ignore], pointers and _syncRoot, by
    // ordinal name.
    private static FieldInfo[] HyperionFields(Type type)
    {
        var fields = new List<FieldInfo>();
        for (var current = type; current is not null; current = current.BaseType)
        {
            fields.AddRange(current.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly)
                .Where(f => !f.IsDefined(typeof(NonSerializedAttribute)) && !f.IsDefined(typeof(Hyperion.IgnoreAttribute))
                            && f.FieldType != typeof(IntPtr) && f.FieldType != typeof(UIntPtr) && f.Name != "_syncRoot"));
        }

        return fields.OrderBy(f => f.Name, StringComparer.Ordinal).ToArray();
    }

    // Hyperion's wire name for a type (TypeEx.GetShortAssemblyQualifiedName): the assembly-qualified
    // name without version, culture and key, the core library written as %core%.
    internal static string WireName(Type type)
    {
        var core = typeof(int).AssemblyQualifiedName!;
        var coreSuffix = core[core.IndexOf(", Version", StringComparison.Ordinal)..];
        var name = type.AssemblyQualifiedName!.Replace(coreSuffix, ",%core%", StringComparison.Ordinal);
        return System.Text.RegularExpressions.Regex.Replace(
            name,
            "(, Version=([\\d\\.]+))?(, Culture=[^,\\] \\t]+)?(, PublicKeyToken=(null|[\\da-f]+))?",
            string.Empty,
            System.Text.RegularExpressions.RegexOptions.CultureInvariant | System.Text.RegularExpressions.RegexOptions.IgnoreCase);
    }
}
