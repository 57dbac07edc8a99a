using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.Serialization;
using System.Text;
using ActorBlk.Actors.Serialization;
using ActorBlk.Actors.Tests.Support;
using Akka.Actor;
using Akka.Configuration;
using Akka.Serialization;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.Serialization;

/// <summary>
/// The wire schema in front of Hyperion (README, "Security"): every honest payload passes it, and
/// what a hostile peer can build from one (a value nested in itself by type index, a length larger
/// than the message, a type named another way) is refused before Hyperion reads a byte, with a
/// <see cref="SerializationException"/> and without allocating what the payload claims.
/// </summary>
public sealed class WireSchemaSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly Config Bound = ConfigurationFactory.ParseString("""
        akka.actor {
          serializers.actorblk = "ActorBlk.Actors.Serialization.ActorBlkHyperionSerializer, ActorBlk.Actors"
          serialization-bindings { "ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors" = actorblk }
        }
        """).WithFallback(Configs.Simulated);

    private readonly Serializer _ours;

    public WireSchemaSpec(ITestOutputHelper output)
        : base(Bound, output: output)
    {
        _ours = Sys.Serialization.FindSerializerForType(typeof(IActorBlkMessage));
        Assert.IsType<ActorBlkHyperionSerializer>(_ours);
    }

    public static IEnumerable<object[]> RootTypes() => WireSchema.RootTypes.OrderBy(t => t.FullName).Select(t => new object[] { t });

    [Theory]
    [MemberData(nameof(RootTypes))]
    public void Every_message_type_passes_with_every_field_filled_and_with_every_field_empty(Type type)
    {
        var plain = new HyperionSerializer((ExtendedActorSystem)Sys, ActorBlkHyperionSerializer.HyperionSettings);
        foreach (var message in new[] { Sample(type, filled: true), Sample(type, filled: false) })
        {
            var bytes = _ours.ToBinary(message);
            WireSchema.Check(bytes);

            // Hyperion behind it reads the same message back (the admission rules aside). An
            // envelope becomes the request it carries when it is read, so it is compared as that;
            // one without a request is refused as it is read.
            if (message is RemoteSurface.AuthenticatedWire wire)
            {
                if (wire.Message is null)
                {
                    Assert.Throws<SerializationException>(() => plain.FromBinary(bytes, type));
                    continue;
                }

                var authenticated = Assert.IsType<RemoteSurface.Authenticated>(plain.FromBinary(bytes, type));
                Assert.Equal(wire.Credential, authenticated.Credential);
                Assert.Equivalent(new Sysfs.Read("x"), authenticated.Message, strict: true);
                continue;
            }

            Assert.Equivalent(message, plain.FromBinary(bytes, type), strict: true);
        }
    }

    [Fact]
    public void The_schema_covers_every_message_the_network_may_send()
    {
        foreach (var inbound in RemoteSurface.InboundTypes.Where(t => t != typeof(RemoteSurface.Authenticated)))
        {
            Assert.Contains(inbound, WireSchema.RootTypes);
        }

        // The envelope travels as its wire form only.
        Assert.Contains(typeof(RemoteSurface.AuthenticatedWire), WireSchema.RootTypes);
        Assert.DoesNotContain(typeof(RemoteSurface.Authenticated), WireSchema.RootTypes);
    }

    [Fact]
    public void A_value_nested_in_itself_by_type_index_is_refused_before_it_overflows_the_stack()
    {
        // An outside audit's follow-up: Hyperion reads every field through its manifest, and index
        // 0 names the payload's first type again, so "254 00 00" nests the message in its own field
        // at three bytes a level. 3 KB of it overflowed the reader's stack and killed the process
        // (the test host died). The schema wants a string in that field and refuses the first level.
        var honest = _ours.ToBinary(new Sysfs.Read("x"));
        var field = honest.Length - 3; // the string "x": manifest 7, length byte 2, 'x'
        var evil = new List<byte>(honest[..field]);
        for (var i = 0; i < 1000; i++)
        {
            evil.AddRange([254, 0, 0]);
        }

        evil.AddRange(honest[field..]);
        var ex = Assert.Throws<SerializationException>(() => _ours.FromBinary(evil.ToArray(), typeof(object)));
        Assert.Contains("manifest 254 where a String is required", ex.Message);
    }

    [Fact]
    public void A_length_larger_than_the_payload_anywhere_in_any_message_is_refused_without_allocating_it()
    {
        // Every 4-byte window of every message overwritten with 2^31 - 16, and every byte with 255
        // (a string's "Int32 length follows"): Hyperion allocated such a length before reading it,
        // 2 GB for a half-kilobyte message. Each read must end in the message or a refusal, and
        // allocate about what the message holds.
        var payloads = WireSchema.RootTypes.Select(t => _ours.ToBinary(Sample(t, filled: true))).ToList();
        foreach (var bytes in payloads)
        {
            Warm(bytes); // Hyperion compiles each type's reader once, on its first read.
        }

        var reads = 0;
        foreach (var bytes in payloads)
        {
            for (var offset = 0; offset < bytes.Length; offset++)
            {
                var wide = (byte[])bytes.Clone();
                BitConverter.GetBytes(int.MaxValue - 15).AsSpan(0, Math.Min(4, bytes.Length - offset)).CopyTo(wide.AsSpan(offset));
                AssertBounded(wide);
                var one = (byte[])bytes.Clone();
                one[offset] = 255;
                AssertBounded(one);
                reads += 2;
            }
        }

        Assert.True(reads > 1000, $"{reads} reads");
    }

    [Fact]
    public void Random_damage_to_any_message_ends_in_the_message_or_a_refusal_never_a_crash_or_a_large_allocation()
    {
        var payloads = WireSchema.RootTypes.Select(t => _ours.ToBinary(Sample(t, filled: true))).ToList();
        foreach (var bytes in payloads)
        {
            Warm(bytes);
        }

        var random = new Random(20261203);
        for (var i = 0; i < 20_000; i++)
        {
            var bytes = (byte[])payloads[random.Next(payloads.Count)].Clone();
            switch (random.Next(3))
            {
                case 0:
                    for (var n = random.Next(1, 5); n > 0; n--)
                    {
                        bytes[random.Next(bytes.Length)] = (byte)random.Next(256);
                    }

                    break;
                case 1:
                    bytes = bytes[..random.Next(bytes.Length)];
                    break;
                default:
                    var at = random.Next(bytes.Length);
                    var insert = new byte[random.Next(1, 8)];
                    random.NextBytes(insert);
                    bytes = [.. bytes[..at], .. insert, .. bytes[at..]];
                    break;
            }

            AssertBounded(bytes);
        }
    }

    [Fact]
    public void A_type_named_any_other_way_than_hyperions_own_is_refused()
    {
        // The type filter accepts a name with a version, or with mscorlib for the core library
        // (it resolves to the same type), and Hyperion caches every spelling it resolves: a peer
        // could grow that cache without bound, one spelling a message. The schema takes only the
        // spelling Hyperion writes.
        var honest = _ours.ToBinary(new Sysfs.Read("x"));
        const string Name = "ActorBlk.Actors.Sysfs+Read, ActorBlk.Actors";
        Assert.Equal(Name, Encoding.ASCII.GetString(honest, 5, Name.Length));

        foreach (var spelling in new[] { Name + ", Version=1.0.0.0", Name + ", Version=2.0.0.0, Culture=neutral", Name.ToLowerInvariant() })
        {
            Assert.True(spelling == Name.ToLowerInvariant() || ActorBlkTypeFilter.Instance.IsAllowed(spelling), spelling);
            var renamed = new List<byte> { honest[0] };
            renamed.AddRange(BitConverter.GetBytes(spelling.Length));
            renamed.AddRange(Encoding.ASCII.GetBytes(spelling));
            renamed.AddRange(honest[(5 + Name.Length)..]);
            var ex = Assert.Throws<SerializationException>(() => _ours.FromBinary(renamed.ToArray(), typeof(object)));
            Assert.Contains("unknown type", ex.Message);
        }
    }

    [Fact]
    public void Bytes_after_the_message_and_a_message_cut_short_are_refused()
    {
        var honest = _ours.ToBinary(new BlockLayer.Io("nullb0", 1, Hardware.Requests.BlockOp.Write, 0, 4, [1, 2, 3, 4]));
        Assert.Contains("1 bytes follow the message", Assert.Throws<SerializationException>(() => _ours.FromBinary([.. honest, 0], typeof(object))).Message);
        for (var length = 0; length < honest.Length; length++)
        {
            // Worded as every refusal of the surface, which a node's log limits as peer noise (a
            // refusal worded otherwise was logged whole, with its stack, every time: an outside audit).
            Assert.StartsWith("ActorBlk refuses", Assert.Throws<SerializationException>(() => _ours.FromBinary(honest[..length], typeof(object))).Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void An_envelope_s_request_is_checked_against_the_schema_too()
    {
        // The request inside an authenticated envelope is a payload of its own, read by Hyperion
        // when the envelope is: the same nesting inside it is refused the same way.
        var inner = _ours.ToBinary(new Sysfs.Read("x"));
        var field = inner.Length - 3;
        byte[] nested = [.. inner[..field], .. Enumerable.Repeat(new byte[] { 254, 0, 0 }, 1000).SelectMany(b => b), .. inner[field..]];
        var envelope = _ours.ToBinary(new RemoteSurface.AuthenticatedWire("secret", nested));
        var ex = Assert.ThrowsAny<Exception>(() => _ours.FromBinary(envelope, typeof(object)));
        Assert.Contains("manifest 254 where a String is required", ex.ToString());
    }

    // Reads a damaged payload: it must come back as a message or a SerializationException, and
    // allocate no more than a small multiple of its size.
    private void AssertBounded(byte[] bytes)
    {
        var before = GC.GetAllocatedBytesForCurrentThread();
        try
        {
            Read(bytes);
        }
        catch (SerializationException)
        {
        }

        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated < (1 << 20) + (16L * bytes.Length), $"{allocated} bytes allocated reading {bytes.Length}: {Convert.ToHexString(bytes)}");
    }

    private object Read(byte[] bytes) => _ours.FromBinary(bytes, typeof(object));

    // Reads an honest payload once; the node's internal messages are refused after they are read.
    private void Warm(byte[] bytes)
    {
        try
        {
            Read(bytes);
        }
        catch (SerializationException ex) when (ex.Message.Contains("from the network", StringComparison.Ordinal))
        {
        }
    }

    // A message of the type with every field set (filled) or left at its default, built field by
    // field as Hyperion reads it.
    private object Sample(Type type, bool filled)
    {
        if (type == typeof(RemoteSurface.AuthenticatedWire) && filled)
        {
            return new RemoteSurface.AuthenticatedWire(new string('c', 300), _ours.ToBinary(new Sysfs.Read("x")));
        }

        var message = RuntimeHelpers.GetUninitializedObject(type);
        foreach (var field in Fields(type))
        {
            field.SetValue(message, Value(field.FieldType, filled, depth: 0));
        }

        return message;
    }

    private object? Value(Type type, bool filled, int depth)
    {
        if (!filled)
        {
            return type.IsValueType ? Activator.CreateInstance(type) : null;
        }

        if (type.IsEnum)
        {
            var values = Enum.GetValues(type);
            return values.GetValue(values.Length - 1);
        }

        return type switch
        {
            _ when type == typeof(long) => 0x0102030405060708L,
            _ when type == typeof(ulong) => 0x8102030405060708UL,
            _ when type == typeof(int) => 0x01020304,
            _ when type == typeof(bool) => true,
            _ when type == typeof(string) => depth == 0 ? new string('s', 300) : "s",
            _ when type == typeof(byte[]) => Enumerable.Range(0, 300).Select(i => (byte)i).ToArray(),
            _ when type == typeof(string[]) => new[] { "a", new string('b', 260), "" },
            _ when type == typeof(int[]) => new[] { 1, 2, 3 },
            _ when type == typeof(long[]) => new[] { 1L, 2L, 3L },
            _ when type.IsArray => Array(type.GetElementType()!, depth),
            _ when type.IsClass && type.IsSealed => Sample(type, filled: true),
            _ => throw new NotSupportedException($"no sample for {type}"),
        };
    }

    private Array Array(Type element, int depth)
    {
        var array = System.Array.CreateInstance(element, 3);
        array.SetValue(Value(element, true, depth + 1), 0);
        array.SetValue(Value(element, true, depth + 1), 1); // the element's type again: by index on the wire
        return array; // and a null
    }

    private static IEnumerable<FieldInfo> Fields(Type type)
    {
        for (var current = type; current is not null; current = current.BaseType)
        {
            foreach (var field in current.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                yield return field;
            }
        }
    }
}
