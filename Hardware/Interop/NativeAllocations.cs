using System.Runtime.InteropServices;

namespace ActorBlk.Hardware.Interop;

/// <summary>
/// Every native allocation ActorBlk makes goes through here, so that what is live can be counted:
/// the leak tests hold the project to "after N create/destroy cycles, the native bytes are back
/// where they started", and <c>actorblk serve</c> can report them.
/// </summary>
public static unsafe class NativeAllocations
{
    private static long _bytes;
    private static long _blocks;

    /// <summary>Native bytes allocated and not yet freed.</summary>
    public static long LiveBytes => Interlocked.Read(ref _bytes);

    /// <summary>Native blocks allocated and not yet freed.</summary>
    public static long LiveBlocks => Interlocked.Read(ref _blocks);

    /// <summary><c>NativeMemory.AlignedAlloc</c>, counted.</summary>
    public static void* AlignedAlloc(nuint bytes, nuint alignment)
    {
        var p = NativeMemory.AlignedAlloc(bytes, alignment);
        Count((long)bytes, 1);
        return p;
    }

    /// <summary><c>NativeMemory.AlignedFree</c> of a block of <paramref name="bytes"/>, counted.</summary>
    public static void AlignedFree(void* pointer, nuint bytes)
    {
        if (pointer is null)
        {
            return;
        }

        NativeMemory.AlignedFree(pointer);
        Count(-(long)bytes, -1);
    }

    /// <summary><c>NativeMemory.Realloc</c> from <paramref name="oldBytes"/> (0 for a new block) to <paramref name="bytes"/>, counted.</summary>
    public static void* Realloc(void* pointer, nuint oldBytes, nuint bytes)
    {
        var p = NativeMemory.Realloc(pointer, bytes);
        Count((long)bytes - (long)oldBytes, pointer is null ? 1 : 0);
        return p;
    }

    /// <summary><c>NativeMemory.Free</c> of a block of <paramref name="bytes"/>, counted.</summary>
    public static void Free(void* pointer, nuint bytes)
    {
        if (pointer is null)
        {
            return;
        }

        NativeMemory.Free(pointer);
        Count(-(long)bytes, -1);
    }

    private static void Count(long bytes, long blocks)
    {
        Interlocked.Add(ref _bytes, bytes);
        Interlocked.Add(ref _blocks, blocks);
    }
}
