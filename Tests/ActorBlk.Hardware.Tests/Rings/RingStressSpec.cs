using ActorBlk.Hardware.Rings;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Rings;

/// <summary>
/// The submission and free-list rings under contention: many producers publishing into a small
/// ring (so it wraps and fills constantly) while consumers drain it. Every item published is
/// taken exactly once, none is invented, and each producer's items come out in the order it
/// published them (per consumer, for the multi-consumer ring). Bounded in count, not in time.
/// </summary>
public sealed class RingStressSpec
{
    private const int Producers = 4;
    private const int PerProducer = 100_000;

    // Liveness bound only: a lost item would leave the consumer waiting for it forever, so the
    // bound is on progress, not on the whole run. Five spinning threads on a loaded two-core
    // machine move an 8-slot ring a few items per time slice: 400,000 items took over 2 minutes
    // at a load of 40, still taking items all along.
    private static readonly TimeSpan Stall = TimeSpan.FromMinutes(1);

    // Producers and consumers spin when the ring is full or empty: each gets a thread of its own,
    // so none waits for the thread pool to grow.
    private static Task Dedicated(Action body) =>
        Task.Factory.StartNew(body, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    // An item names its producer and its sequence number within that producer.
    private sealed record Item(int Producer, int Sequence);

    [Theory]
    [InlineData(8, false)]
    [InlineData(64, false)]
    [InlineData(8, true)]
    [InlineData(64, true)]
    public async Task Mpsc_many_producers_one_consumer_lose_nothing_duplicate_nothing_and_keep_each_producers_order(int capacity, bool batches)
    {
        var ring = new MpscRing<Item>(capacity);
        var seen = new int[Producers * PerProducer];
        var next = new int[Producers];
        var outOfOrder = 0;
        var taken = 0;

        var producers = Enumerable.Range(0, Producers).Select(p => Dedicated(() =>
        {
            var batch = new Item[3];
            var i = 0;
            while (i < PerProducer)
            {
                if (batches && i + batch.Length <= PerProducer)
                {
                    for (var k = 0; k < batch.Length; k++)
                    {
                        batch[k] = new Item(p, i + k);
                    }

                    // All or nothing: a refused batch publishes nothing and is tried again.
                    if (ring.TryPublishBatch(batch))
                    {
                        i += batch.Length;
                    }
                    else
                    {
                        Thread.Yield();
                    }

                    continue;
                }

                if (ring.TryPublish(new Item(p, i)))
                {
                    i++;
                }
                else
                {
                    Thread.Yield();
                }
            }
        })).ToArray();

        var consumer = Dedicated(() =>
        {
            var scratch = new Item[5];
            while (taken < seen.Length)
            {
                var n = ring.TakeBatch(scratch);
                if (n == 0)
                {
                    if (ring.TryTake(out var one))
                    {
                        Record(one);
                    }
                    else
                    {
                        Thread.Yield();
                    }

                    continue;
                }

                for (var k = 0; k < n; k++)
                {
                    Record(scratch[k]);
                }
            }
        });

        void Record(Item item)
        {
            seen[(item.Producer * PerProducer) + item.Sequence]++;
            if (item.Sequence != next[item.Producer])
            {
                outOfOrder++;
            }

            next[item.Producer] = item.Sequence + 1;
            taken++;
        }

        await StallWatch.RunAsync(() => Task.WhenAll([.. producers, consumer]), () => Volatile.Read(ref taken), Stall, () => $"items taken: {Volatile.Read(ref taken)}");

        Assert.Equal(0, outOfOrder);
        Assert.All(seen, count => Assert.Equal(1, count));
        Assert.True(ring.IsEmpty);
        Assert.False(ring.TryTake(out _));
        Assert.Equal(0, ring.Count);
    }

    [Theory]
    [InlineData(8)]
    [InlineData(64)]
    public async Task Mpmc_many_producers_many_consumers_lose_nothing_duplicate_nothing_and_keep_each_producers_order(int capacity)
    {
        const int consumers = 3;
        var ring = new MpmcRing<Item>(capacity);
        var seen = new int[Producers * PerProducer];
        var outOfOrder = 0;
        var taken = 0;

        var producers = Enumerable.Range(0, Producers).Select(p => Dedicated(() =>
        {
            for (var i = 0; i < PerProducer;)
            {
                if (ring.TryAdd(new Item(p, i)))
                {
                    i++;
                }
                else
                {
                    Thread.Yield();
                }
            }
        })).ToArray();

        var consumerTasks = Enumerable.Range(0, consumers).Select(_ => Dedicated(() =>
        {
            // Per consumer, a producer's items arrive in the order it added them (FIFO ring).
            var last = Enumerable.Repeat(-1, Producers).ToArray();
            while (Volatile.Read(ref taken) < seen.Length)
            {
                if (!ring.TryTake(out var item))
                {
                    Thread.Yield();
                    continue;
                }

                Interlocked.Increment(ref seen[(item.Producer * PerProducer) + item.Sequence]);
                if (item.Sequence <= last[item.Producer])
                {
                    Interlocked.Increment(ref outOfOrder);
                }

                last[item.Producer] = item.Sequence;
                Interlocked.Increment(ref taken);
            }
        })).ToArray();

        await StallWatch.RunAsync(() => Task.WhenAll([.. producers, .. consumerTasks]), () => Volatile.Read(ref taken), Stall, () => $"items taken: {Volatile.Read(ref taken)}");

        Assert.Equal(0, outOfOrder);
        Assert.All(seen, count => Assert.Equal(1, count));
        Assert.Equal(seen.Length, taken);
        Assert.False(ring.TryTake(out _));
        Assert.Equal(0, ring.Count);
    }
}
