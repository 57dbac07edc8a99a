using System.Buffers.Binary;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// What the structured-reply specs of the NBD client driver share: a scripted server
/// (<see cref="FakeNbdServer"/>) that negotiates structured replies and <c>base:allocation</c>,
/// chunk payloads, and a one-connection client device on it.
/// </summary>
internal static class StructuredReplies
{
    /// <summary>The id the server gives <c>base:allocation</c>.</summary>
    public const uint Context = 7;

    /// <summary>An export with structured replies and <c>base:allocation</c>.</summary>
    public static readonly FakeNbdExport Structured = FakeNbdExport.Default with { Structured = true, AllocationContext = Context };

    /// <summary>An OFFSET_DATA payload: the offset, then <paramref name="length"/> bytes of <paramref name="fill"/>.</summary>
    public static byte[] Data(ulong offset, byte fill, int length)
    {
        var payload = new byte[8 + length];
        BinaryPrimitives.WriteUInt64BigEndian(payload, offset);
        payload.AsSpan(8).Fill(fill);
        return payload;
    }

    /// <summary>A BLOCK_STATUS payload: the context id, then each extent's length and flags.</summary>
    public static byte[] Extents(uint context, params (uint Length, uint Flags)[] extents)
    {
        var payload = new byte[4 + (8 * extents.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(payload, context);
        for (var i = 0; i < extents.Length; i++)
        {
            BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(4 + (8 * i)), extents[i].Length);
            BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(8 + (8 * i)), extents[i].Flags);
        }

        return payload;
    }

    /// <summary>
    /// A server whose first connection hands each request to <paramref name="first"/> (which
    /// returns false to have it answered well); every other request is answered well: reads with
    /// 0x5a, block status as one data extent, the rest with NONE.
    /// </summary>
    public static FakeNbdServer Server(Func<FakeNbdSession, FakeNbdRequest, Task<bool>> first) => new(_ => Structured, async s =>
    {
        while (await s.ReadRequestAsync() is { } r)
        {
            if (r.Command == NbdCommand.Disconnect)
            {
                return;
            }

            if (s.Index == 0 && await first(s, r))
            {
                continue;
            }

            await (r.Command switch
            {
                NbdCommand.Read => s.ChunkAsync(r.Cookie, done: true, (ushort)NbdChunkType.OffsetData, Data(r.Offset, 0x5a, (int)r.Length)),
                NbdCommand.BlockStatus => s.ChunkAsync(r.Cookie, done: true, (ushort)NbdChunkType.BlockStatus, Extents(Context, (r.Length, 0))),
                _ => s.ChunkAsync(r.Cookie, done: true, (ushort)NbdChunkType.None, []),
            });
        }
    });

    /// <summary>A client device named <paramref name="name"/> with one connection to <paramref name="server"/>.</summary>
    public static BlockDevice Open(RingDevices devices, FakeNbdServer server, string name) =>
        devices.Create(new DeviceOptions { Name = name, Driver = "nbd", Uri = server.Uri(), Connections = 1 }, CpuTopology.Simulated(2));
}
