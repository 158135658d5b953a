// Images sent by the kernel as RGB uint8 payloads, drawn into canvases.
import { bytesOf } from "./decode";

export interface ImagePayload {
  data: DataView;
  height: number;
  width: number;
}

/** An RGB uint8 payload drawn into a fresh canvas. */
export function rgbCanvas(im: Partial<ImagePayload> | null | undefined): HTMLCanvasElement | null {
  if (!im || !im.data || im.width === undefined || im.height === undefined) return null;
  const rgb = bytesOf(im.data);
  const c = document.createElement("canvas");
  c.width = im.width;
  c.height = im.height;
  const ctx = c.getContext("2d")!;
  const data = ctx.createImageData(im.width, im.height);
  for (let i = 0, j = 0; i < im.width * im.height; i++, j += 3) {
    data.data[i * 4] = rgb[j];
    data.data[i * 4 + 1] = rgb[j + 1];
    data.data[i * 4 + 2] = rgb[j + 2];
    data.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(data, 0, 0);
  return c;
}
